"""tracekit: Python execution traces in the format of Meta's Code World Model (CWM)."""
