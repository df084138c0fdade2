def parse(s):
    return int(s)


def parse_all(items):  # << START_OF_TRACE
    out = []
    for s in items:
        try:
            out.append(parse(s))
        except ValueError:
            out.append(None)
    return out

# tracekit-call: parse_all(["7", "x"])
