class Point:
    def __init__(self, x, y):
        self.x = x
        self.y = y

    def norm1(self):
        return abs(self.x) + abs(self.y)


def make(x, y):  # << START_OF_TRACE
    p = Point(x, y)
    return p.norm1()

# tracekit-call: make(1, -2)
