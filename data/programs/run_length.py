def run_length(s):  # << START_OF_TRACE
    encoded = []
    i = 0
    while i < len(s):
        j = i
        while j < len(s) and s[j] == s[i]:
            j += 1
        encoded.append(f"{j - i}{s[i]}")
        i = j
    else:
        encoded.append("$")
    return "".join(encoded)

# tracekit-call: run_length("aaabcc")
