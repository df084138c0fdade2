def greet(names):  # << START_OF_TRACE
    lines = []
    for name in names:
        lines.append(f"héllo, {name}!\n")
    return "".join(lines)

# tracekit-call: greet(["Zoë", "李"])
