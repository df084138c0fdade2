"""Errors a user can cause with a model, importable without torch (the command line catches
them before any model is loaded)."""


class BackendError(Exception):
    """A backend cannot be loaded or reached; the message says why and what to do."""


class ContextError(Exception):
    """A prompt, a trace or a conversation longer than the model's context; the message gives
    the lengths and what to do (exit 10 on the command line)."""
