"""Errors a user can act on.

Every failure a user can cause or fix (a missing key, a wrong model, an endpoint without
logprobs, a malformed fixture or config) is raised as an :class:`AuditError` subclass. The CLI
prints its message as one paragraph and exits with its code; nothing else is shown, so the
message must say what happened and what to do about it.
"""

from __future__ import annotations


class AuditError(Exception):
    """A failure with a message meant for the user and a process exit code."""

    exit_code = 1

    def __init__(self, message: str):
        # Messages often quote what a server said (a 401 body may quote our Authorization
        # header): every secret this process holds is cut out before anyone can print it.
        from .redact import scrub

        message = scrub(message)
        super().__init__(message)
        self.message = message


class ConfigError(AuditError):
    """Bad flags, a malformed config, a run directory that belongs to another run."""

    exit_code = 2


class EndpointError(AuditError):
    """The endpoint refused us: bad key, unknown model, missing capability, not reachable."""

    exit_code = 3


class FixtureError(AuditError):
    """A fixture file is malformed, or replay found no recorded answer for a request."""

    exit_code = 4


class DegradedShareExceeded(AuditError):
    """Too many rows came back unusable (bad logprobs) for the ranking to mean anything."""

    exit_code = 5


class ReferenceError_(AuditError):
    """The local reference model could not be found or loaded."""

    exit_code = 6


class ScorerError(ReferenceError_):
    """The scorer pool could not start or keep going (ray missing, no cluster at the address,
    replicas that cannot load the model or keep dying): the same exit code as a reference
    that cannot be loaded, since to the user it is the same failure, one step removed."""
