def walk(xs, s):  # << START_OF_TRACE
    it = iter(xs)
    first = next(it)
    chars = iter(s)
    pairs = enumerate(xs)
    return first, next(chars)

# tracekit-call: walk([1, 2], "ab")
