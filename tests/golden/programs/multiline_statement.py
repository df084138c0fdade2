def build(a, b):  # << START_OF_TRACE
    config = {
        "a": a,
        "b": b,
    }
    total = (a +
             b)
    return config, total

# tracekit-call: build(1, 2)
