"""Errors the serving side raises for bad requests; each carries the HTTP status it maps to."""

from __future__ import annotations


class RequestError(ValueError):
    """A request the server cannot answer because of what the client sent (4xx)."""

    status: int = 400

    def __init__(self, message: str, status: int | None = None) -> None:
        super().__init__(message)
        if status is not None:
            self.status = status

    @property
    def message(self) -> str:
        return str(self.args[0])


class InputError(ValueError):
    """Pre-processing could not use an input (an image, a clip, a row, a series); the message names
    what is wrong. Routes answer it with a 400 naming the item."""


class UnknownModel(RequestError):
    status = 404


class TooManyRequests(RequestError):
    """More requests in flight than the server admits at once; the client should retry shortly."""

    status = 429


class Overloaded(RequestError):
    """The server is at capacity; the client should retry later."""

    status = 503


class ManifestError(RuntimeError):
    """A model folder whose manifest or files are missing, malformed or do not match their sha256."""
