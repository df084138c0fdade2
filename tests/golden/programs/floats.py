def stats(xs):  # << START_OF_TRACE
    mean = sum(xs) / len(xs)
    tiny = 1e-7 * mean
    inf = float("inf")
    return mean, tiny, -inf

# tracekit-call: stats([0.1, 0.2])
