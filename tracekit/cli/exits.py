"""The command line's exit codes: a traced program's status gives its code (beside
`tracekit.format.trace.STATUSES`), and the codes past 6 are the command line's own. Every command's
`--help` and README's table are written from EXIT_MEANINGS."""

EXIT_CODES = {
    "ok": 0,
    "raised": 1, "exited": 1,
    "timeout": 3, "memory_limit": 3, "output_limit": 3, "frame_limit": 3, "recursion_limit": 3,
    "syntax_error": 4, "no_entry": 4, "setup_error": 4,
    "crashed": 5,
    "sandbox_unavailable": 6,
}
EXIT_MEANINGS = {
    0: "ok",
    1: "the program raised or called sys.exit (the trace is complete)",
    2: "bad command line",
    3: "a limit was hit (timeout, memory, output, frames, recursion)",
    4: "syntax error, no entry function or module-level error",
    5: "the program crashed",
    6: "sandbox or interpreter unavailable",
    7: "the model could not be loaded or reached",
    8: "the sources, the dataset, a predictions file, an output path or a port is unusable",
    9: "tracekit itself failed (a bug: rerun with --debug and report the traceback)",
    10: "longer than the model's context (a prompt, a trace or a conversation)",
    130: "interrupted (Ctrl-C): what was finished is kept, and --resume goes on from it",
}
EXIT_MODEL, EXIT_DATA, EXIT_BUG, EXIT_TOO_LONG, EXIT_INTERRUPTED = 7, 8, 9, 10, 130
