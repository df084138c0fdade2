def lookup(d, k):  # << START_OF_TRACE
    try:
        v = d[k]
    except KeyError:
        v = -1
    return v

# tracekit-call: lookup({'a': 1}, 'b')
