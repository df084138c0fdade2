def f(text):
    words = text.split()
    return "-".join(w.upper() for w in words if len(w) > 1)

def main(): # << START_OF_TRACE
    return f("a bc de")
