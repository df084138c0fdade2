def square(n):
    result = n * n
    return result


def sum_squares(a, b):  # << START_OF_TRACE
    total = square(a)
    total += square(b)
    return total

# tracekit-call: sum_squares(2, 3)
