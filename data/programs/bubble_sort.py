def bubble_sort(items):  # << START_OF_TRACE
    items = list(items)
    n = len(items)
    for i in range(n):
        swapped = False
        for j in range(n - 1 - i):
            if items[j] > items[j + 1]:
                items[j], items[j + 1] = items[j + 1], items[j]
                swapped = True
        if not swapped:
            break
    return items

# tracekit-call: bubble_sort([3, 1, 2])
