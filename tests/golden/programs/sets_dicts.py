def tally(words):  # << START_OF_TRACE
    seen = set()
    counts = {}
    for w in words:
        seen.add(w)
        counts[w] = counts.get(w, 0) + 1
    return sorted(seen), counts

# tracekit-call: tally(["pear", "fig", "pear", "kiwi"])
