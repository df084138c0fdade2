def order(words):  # << START_OF_TRACE
    key = lambda w: (len(w), w)
    return sorted(words, key=key)

# tracekit-call: order(["bb", "a"])
