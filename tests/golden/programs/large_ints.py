def powers(base):  # << START_OF_TRACE
    big = base ** 100
    huge = 10 ** 4400 - 1
    digits = len(str(big))
    return digits

# tracekit-call: powers(7)
