def word_count(text):  # << START_OF_TRACE
    counts = {}
    for word in text.lower().split():
        word = word.strip(".,!?")
        counts[word] = counts.get(word, 0) + 1
    return counts

# tracekit-call: word_count("The cat saw the dog. The end!")
