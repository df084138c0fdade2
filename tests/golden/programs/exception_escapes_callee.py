def check(x):
    if x < 0:
        raise ValueError("negative")
    return x


def total(xs):  # << START_OF_TRACE
    s = 0
    for x in xs:
        s += check(x)
    return s

# tracekit-call: total([1, -1])
