def evaluate(tokens):  # << START_OF_TRACE
    stack = []
    ops = {"+": lambda a, b: a + b, "*": lambda a, b: a * b}
    for tok in tokens:
        if tok in ops:
            b = stack.pop()
            a = stack.pop()
            stack.append(ops[tok](a, b))
        else:
            stack.append(int(tok))
    if len(stack) != 1:
        raise ValueError(f"bad expression, stack={stack}")
    return stack[0]

# tracekit-call: evaluate(["2", "3", "+"])
