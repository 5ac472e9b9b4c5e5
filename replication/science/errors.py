"""The errors a user can act on: each carries a message that names the problem and the way out.

A command-line module turns any of them into one ``error: ...`` line and its exit code, with no
traceback (``replication.runtime.cli``). Anything else that escapes a command is a bug, reported as such.
"""

from __future__ import annotations

import difflib
from collections.abc import Iterable


class ReplicationError(Exception):
    """A problem with the input or the state on disk, not with the code. Exit code 2."""

    exit_code = 2
    prefix = "error"


class ConfigError(ReplicationError, ValueError):
    """A configuration that cannot be used, with a message that names the offending key."""


class RunFolderError(ReplicationError):
    """A run folder in a state training cannot continue from: held by another process, a damaged
    checkpoint or metrics file, or a summary of another config."""


class DataError(ReplicationError):
    """Input data that is missing, damaged or not what its config names."""


class NonFiniteLossError(ReplicationError):
    """Training met non-finite losses in too many steps in a row. Exit code 3."""

    exit_code = 3


def did_you_mean(name: object, choices: Iterable[object]) -> str:
    """`` (did you mean 'x'?)`` for the choice closest to a mistyped name, or "" when none is close.
    A name is never its own hint."""
    others = sorted({str(c) for c in choices} - {str(name)})
    hint = difflib.get_close_matches(str(name), others, n=1)
    return f" (did you mean '{hint[0]}'?)" if hint else ""
