def transpose(matrix):  # << START_OF_TRACE
    rows = len(matrix)
    cols = len(matrix[0])
    return [[matrix[r][c] for r in range(rows)] for c in range(cols)]

# tracekit-call: transpose([[1, 2], [3, 4]])
