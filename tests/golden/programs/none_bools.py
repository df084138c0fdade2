def check(x):  # << START_OF_TRACE
    found = None
    ok = x > 0
    flag = not ok
    if ok:
        found = True
    return found, flag

# tracekit-call: check(1)
