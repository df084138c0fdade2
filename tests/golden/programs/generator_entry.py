def chunks(items, size):  # << START_OF_TRACE
    for start in range(0, len(items), size):
        yield items[start:start + size]

# tracekit-call: list(chunks([1, 2, 3], 2))
