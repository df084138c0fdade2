def shift_char(c, k):
    if not c.isalpha():
        return c
    base = ord("a") if c.islower() else ord("A")
    return chr((ord(c) - base + k) % 26 + base)


def caesar(text, k):  # << START_OF_TRACE
    out = []
    for c in text:
        out.append(shift_char(c, k))
    return "".join(out)

# tracekit-call: caesar("Hi, Z", 3)
