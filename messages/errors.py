"""Errors that reach a user.

Every error names the bad value, where it came from, and what to do about
it. Each class carries the HTTP status the API server maps it to, so the
server needs no table of its own.
"""

from __future__ import annotations


class DockyardError(Exception):
    """Base class for errors whose message is written for the user."""

    http_status = 500


class InvalidConfig(DockyardError):
    """A daemon.json or a flag that cannot be used; nothing was changed."""

    http_status = 400


class InvalidRequest(DockyardError):
    """A request whose parameters cannot be carried out as given."""

    http_status = 400


class NotFound(DockyardError):
    """A named image, container or exec instance that does not exist."""

    http_status = 404


class Conflict(DockyardError):
    """A request that clashes with the current state (name in use, not running)."""

    http_status = 409


class RuntimeFailed(DockyardError):
    """An OCI runtime call that exited non-zero or could not be executed."""

    http_status = 500
