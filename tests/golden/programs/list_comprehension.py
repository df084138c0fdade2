def squares(xs):  # << START_OF_TRACE
    out = [x * x for x in xs]
    return out

# tracekit-call: squares([1, 2])
