def make_counter(step):
    count = 0

    def bump():
        nonlocal count
        count += step
        return count

    return bump


def count_twice(step):  # << START_OF_TRACE
    bump = make_counter(step)
    bump()
    return bump()

# tracekit-call: count_twice(5)
