def twice(f):
    def wrapper(x):
        return f(f(x))
    return wrapper


@twice
def inc(x):
    return x + 1


def run(x):  # << START_OF_TRACE
    return inc(x)

# tracekit-call: run(1)
