"""What every ``python -m replication.<command>`` shares: short errors, and the traceback on request.

A ``ReplicationError`` (bad config, damaged run folder, missing data) prints its message after
``error:`` (one line, or one per problem for a config with several) and exits with its code: 2 unless
the error names another (3: non-finite losses, 130: interrupted). An ``OSError`` (no space, no
permission, a read-only folder) names the file and the way out, code 2; running out of device
memory says what to lower, code 2. Anything else is a bug: two lines, code 1. ``--debug`` or
``REPLICATION_DEBUG=1`` adds the traceback and keeps the exit code.
"""

from __future__ import annotations

import argparse
import errno
import os
import sys
import traceback
from collections.abc import Callable

from replication.science.errors import ReplicationError

DEBUG_ENV = "REPLICATION_DEBUG"
OUT_OF_MEMORY = (
    "out of memory on the device: lower task.micro_batch_size (raising train.grad_accum keeps the tokens "
    "per step) or task.seq_len"
)


def parser(prog: str, doc: str | None) -> argparse.ArgumentParser:
    """An ArgumentParser whose description is the module docstring's first paragraph, with --debug;
    its usage line names the command as it was called (``gapt-train``, or ``python -m ...``)."""
    script = os.path.basename(sys.argv[0]) if sys.argv else ""
    name = script if script.startswith("gapt-") else f"python -m {prog}"
    result = argparse.ArgumentParser(prog=name, description=(doc or "").split("\n\n")[0])
    result.add_argument("--debug", action="store_true", help=f"show tracebacks (also: {DEBUG_ENV}=1)")
    return result


def positive_int(text: str) -> int:
    """An argparse type: a whole number of at least 1, or a message saying what was given."""
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"must be a whole number, got {text!r}") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be at least 1, got {value}")
    return value


def debugging(args: argparse.Namespace | None = None) -> bool:
    return bool(getattr(args, "debug", False)) or os.environ.get(DEBUG_ENV, "") not in ("", "0")


def _first_line(error: BaseException) -> str:
    text = str(error).strip()
    return text.splitlines()[0] if text else ""


def run(body: Callable[[argparse.Namespace], int | None], args: argparse.Namespace) -> int:
    """Calls body(args) and turns what it raises into a message and an exit code."""
    debug = debugging(args)
    try:
        return body(args) or 0
    except BaseException as error:  # noqa: BLE001 - every exit of a command goes through here
        if isinstance(error, SystemExit):
            raise
        message, code = _describe(error, debug)
        if debug:
            traceback.print_exception(error)
        print(message, file=sys.stderr)
        return code


def os_error_message(error: OSError) -> str:
    """The file system's answer in the user's words: the file, the problem and the way out."""
    where = error.filename if error.filename is not None else "a file"
    reason = error.strerror or str(error)
    if error.errno in (errno.ENOSPC, errno.EDQUOT):
        return (
            f"cannot write {where}: {reason.lower()}. Free space there, or write elsewhere (runs_dir= in the "
            "DAG's global config, --out by hand); then run the same command again: what was already written "
            "stays, and a training run resumes from its last checkpoint"
        )
    writing = getattr(error, "writing", False)  # set by runtime.record.naming, around every write
    if error.errno == errno.EROFS or (error.errno in (errno.EACCES, errno.EPERM) and writing):
        return (
            f"cannot write {where}: {reason.lower()}. Make its folder writable, or write elsewhere "
            "(runs_dir= in the DAG's global config, --out by hand)"
        )
    if error.errno in (errno.EACCES, errno.EPERM):
        return f"cannot access {where}: {reason.lower()}. Check its permissions and its folder's"
    return f"{where}: {reason}" if error.filename is not None else str(error)


def _describe(error: BaseException, debug: bool) -> tuple[str, int]:
    """The message and exit code of what a command raised."""
    if isinstance(error, KeyboardInterrupt):
        return "interrupted", 130
    if isinstance(error, ReplicationError):
        return f"{error.prefix}: {error}", error.exit_code
    if isinstance(error, OSError):
        return f"error: {os_error_message(error)}", 2
    if type(error).__name__ == "OutOfMemoryError":  # torch's, without importing torch here
        return f"error: {OUT_OF_MEMORY}", 2
    message = f"error: unexpected {type(error).__name__}: {_first_line(error)}"
    if not debug:
        message += f"\n  this is a bug; rerun with --debug (or {DEBUG_ENV}=1) for the traceback"
    return message, 1
