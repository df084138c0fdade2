def add_all(xs):  # << START_OF_TRACE
    total = 0
    for x in xs:
        total += x
    return total

# tracekit-call: add_all([3, 4])
