"""Errors raised by the services. Views turn them into messages and HTTP status codes."""


class PairwiseError(Exception):
    """Base class: the message is meant for the person who caused the error."""


class InvalidInput(PairwiseError):
    """The request is malformed; ``field`` names the culprit when there is one."""

    def __init__(self, message: str, field: str | None = None):
        super().__init__(message)
        self.field = field


class Conflict(PairwiseError):
    """The request is well formed but the state of the data does not allow it."""


class NotFound(PairwiseError):
    """The object does not exist, or the caller may not know that it does."""
