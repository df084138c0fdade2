def guarded(x):  # << START_OF_TRACE
    log = []
    try:
        log.append("try")
        return x * 2
    finally:
        log.append("finally")

# tracekit-call: guarded(5)
