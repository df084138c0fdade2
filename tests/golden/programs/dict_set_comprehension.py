def index(words):  # << START_OF_TRACE
    lengths = {w: len(w) for w in words}
    firsts = {w[0] for w in words}
    return lengths, firsts

# tracekit-call: index(["ab", "c"])
