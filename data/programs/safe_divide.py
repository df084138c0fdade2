def safe_divide(pairs):  # << START_OF_TRACE
    results = []
    for a, b in pairs:
        try:
            results.append(a / b)
        except ZeroDivisionError:
            results.append(None)
    return results

# tracekit-call: safe_divide([(6, 3), (1, 0)])
