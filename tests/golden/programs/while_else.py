def find(xs, target):  # << START_OF_TRACE
    i = 0
    while i < len(xs):
        if xs[i] == target:
            break
        i += 1
    else:
        i = None
    return i

# tracekit-call: find([4, 5], 9)
