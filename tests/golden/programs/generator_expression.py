def total_even(xs):  # << START_OF_TRACE
    return sum(x for x in xs if x % 2 == 0)

# tracekit-call: total_even([1, 2, 4])
