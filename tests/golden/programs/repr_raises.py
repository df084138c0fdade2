class Broken:
    def __repr__(self):
        raise RuntimeError("no repr for you")


def hold():  # << START_OF_TRACE
    b = Broken()
    n = 1
    return n

# tracekit-call: hold()
