def first_negative(xs):  # << START_OF_TRACE
    for x in xs:
        if x < 0:
            return x
    return None

# tracekit-call: first_negative([3, -1, -2])
