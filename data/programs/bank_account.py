class Account:
    def __init__(self, owner, balance=0):
        self.owner = owner
        self.balance = balance

    def deposit(self, amount):
        self.balance += amount
        return self.balance

    def __repr__(self):
        return f"Account({self.owner!r}, {self.balance})"


def open_and_deposit(owner, amounts):  # << START_OF_TRACE
    acct = Account(owner)
    for a in amounts:
        acct.deposit(a)
    return acct

# tracekit-call: open_and_deposit("ada", [10, 5])
