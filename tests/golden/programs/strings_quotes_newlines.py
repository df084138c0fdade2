def join_lines(a, b):  # << START_OF_TRACE
    text = a + "\n" + b
    quoted = '"' + text + "'"
    return quoted

# tracekit-call: join_lines("it's", 'say "hi"\t')
