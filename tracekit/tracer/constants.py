"""The markers, placeholders and defaults every layer shares: no imports, so reading a
constant never loads the tracer."""

MARKER = "  # << START_OF_TRACE"
CALL_COMMENT = "# tracekit-call:"
DOTS = ".."

RAISED_PLACEHOLDER = "<tracekit: repr raised {}>"
TIMEOUT_PLACEHOLDER = "<tracekit: repr timed out>"
TOO_LARGE_PLACEHOLDER = "<tracekit: repr too large: {} chars>"
TRUNCATED_MARKER = "...<tracekit: {} more chars>"

DEFAULT_MAX_FRAMES = 10_000
MAX_EPISODE_BYTES = 1 << 20  # CWM dropped traces over 1 MB of text (and over 10,000 events)
DEFAULT_MAX_REPR_CHARS = 1_000_000
DEFAULT_REPR_TIMEOUT = 1.0

# Seconds a traced process that has begun writing its report gets past its deadline: a
# timeout report of a tight loop can hold ~10^6 frames, whose JSON takes seconds to write.
REPORT_GRACE = 8.0
