"""What every ``python -m replication.<command>`` shares: short errors, and the traceback on request.

A ``ReplicationError`` (bad config, damaged run folder, missing data) is one ``error: ...`` line and
its exit code (2 unless the error names another), and so is an ``OSError`` (no space, no permission:
its message names the path). Anything else is a bug: two lines, exit code 1.
``--debug`` or ``REPLICATION_DEBUG=1`` lets every exception through with its traceback.
"""

from __future__ import annotations

import argparse
import os
import sys
from collections.abc import Callable

from replication.errors import ReplicationError

DEBUG_ENV = "REPLICATION_DEBUG"


def parser(prog: str, doc: str | None) -> argparse.ArgumentParser:
    """An ArgumentParser whose description is the module docstring's first paragraph, with --debug."""
    result = argparse.ArgumentParser(prog=f"python -m {prog}", description=(doc or "").split("\n\n")[0])
    result.add_argument("--debug", action="store_true", help=f"show tracebacks (also: {DEBUG_ENV}=1)")
    return result


def debugging(args: argparse.Namespace | None = None) -> bool:
    return bool(getattr(args, "debug", False)) or os.environ.get(DEBUG_ENV, "") not in ("", "0")


def run(body: Callable[[argparse.Namespace], int | None], args: argparse.Namespace) -> int:
    """Calls body(args) and turns what it raises into a message and an exit code."""
    if debugging(args):
        return body(args) or 0
    try:
        return body(args) or 0
    except ReplicationError as error:
        print(f"{error.prefix}: {error}", file=sys.stderr)
        return error.exit_code
    except OSError as error:  # the file system's answer (no space, no permission) names the path
        print(f"error: {error}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130
    except Exception as error:  # noqa: BLE001 - a bug: say so in two lines, the traceback on request
        print(f"error: unexpected {type(error).__name__}: {error}", file=sys.stderr)
        print(f"  this is a bug; rerun with --debug (or {DEBUG_ENV}=1) for the traceback", file=sys.stderr)
        return 1
