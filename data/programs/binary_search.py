def binary_search(xs, target):  # << START_OF_TRACE
    lo, hi = 0, len(xs) - 1
    while lo <= hi:
        mid = (lo + hi) // 2
        if xs[mid] == target:
            return mid
        if xs[mid] < target:
            lo = mid + 1
        else:
            hi = mid - 1
    return -1

# tracekit-call: binary_search([1, 3, 5, 7, 9, 11], 9)
