def countdown(n):
    while n > 0:
        yield n
        n -= 1


def consume(n):  # << START_OF_TRACE
    seen = []
    for v in countdown(n):
        seen.append(v)
    return seen

# tracekit-call: consume(2)
