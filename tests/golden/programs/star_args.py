def describe(*args, **kwargs):  # << START_OF_TRACE
    n = len(args) + len(kwargs)
    return n

# tracekit-call: describe(1, 2, color="red")
