class Money:
    def __init__(self, cents):
        self.cents = cents

    def __repr__(self):
        return f"Money({self.cents / 100:.2f})"


def pay(cents):  # << START_OF_TRACE
    m = Money(cents)
    m.cents -= 50
    return m

# tracekit-call: pay(250)
