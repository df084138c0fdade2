"""Errors a user can cause with a model, importable without torch (the command line catches
them before any model is loaded)."""


class BackendError(Exception):
    """A backend cannot be loaded or reached; the message says why and what to do."""
