def get(d):  # << START_OF_TRACE
    key = "k"
    return d[key]

# tracekit-call: get({})
