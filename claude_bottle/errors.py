"""The project's exceptions: one root user error and the few kinds the CLI maps to exit codes."""

from __future__ import annotations

__all__ = [
    "EXIT_BACKEND",
    "EXIT_OK",
    "EXIT_USAGE",
    "EXIT_USER",
    "BackendError",
    "BottleError",
    "ManifestError",
    "NotFoundError",
]

EXIT_OK = 0
EXIT_USER = 1
EXIT_USAGE = 2
EXIT_BACKEND = 3


class BottleError(Exception):
    """A problem the user can fix; printed as one line (its text says the fix), exit 1."""

    exit_code = EXIT_USER


class ManifestError(BottleError):
    """The manifest is missing, unreadable or invalid."""


class NotFoundError(BottleError):
    """A slug (or prefix) names no bottle, or names more than one."""


class BackendError(BottleError):
    """The engine or a tool it drives failed; exit 3."""

    exit_code = EXIT_BACKEND
