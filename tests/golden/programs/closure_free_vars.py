def make_adder(n):  # << START_OF_TRACE
    def add(x):
        return x + n
    return add(10)

# tracekit-call: make_adder(5)
