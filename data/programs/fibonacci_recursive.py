def fib(n):  # << START_OF_TRACE
    if n < 2:
        return n
    return fib(n - 1) + fib(n - 2)

# tracekit-call: fib(4)
