"""Training runs forked from one warm process: ``python -m replication.launch RUN/config.yaml [ARGS]``.

A smoke-scale run trains for about a second, and one of the forgetting experiment's MLP runs for a
few; a new Python process spends about two more importing torch and building its first optimizer
(which imports torch's compiler). ``replication.trainserver`` pays that once per DAG: it waits on a
Unix socket and, for each request, forks a child that runs ``python -m replication.train``'s
``main(ARGS)`` with the requester's working folder, environment and standard streams.

This command is the requester. It takes the same arguments as ``python -m replication.train``, hands
its stdin, stdout and stderr to the child, passes SIGINT, SIGTERM and SIGHUP on to it (one this
process ignores, as under ``nohup``, the run ignores too), and exits with its exit code: to its
caller (a Snakemake job) it is the training process. With no server named in
``$REPLICATION_TRAIN_SERVER``, or none taking the request, it becomes ``python -m replication.train
ARGS`` itself (exec), after one line on stderr when a server was named. A server that dies under a
running run stops the run (it checkpoints), and the job fails once the run has let go of its folder.

The run's records are the same either way: training reads nothing the server set up, and its
provenance records this command. What a fork cannot take from the requester is what the interpreter
and torch read when they start, which stays the server's: interpreter options, ``PYTHON*`` and
``OMP_NUM_THREADS``-style variables (the DAG sets threads with ``--threads``), and ``TORCH_LOGS``.
Ctrl-Z (SIGTSTP) stops the requester, not the run.

``TrainServer`` starts and stops a server; the Snakefile holds one for a local DAG. This module
imports only the standard library, so that a job starts in tens of milliseconds.
"""

from __future__ import annotations

import atexit
import json
import os
import shutil
import signal
import socket
import struct
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

SERVER_ENV = "REPLICATION_TRAIN_SERVER"
SERVER_MODULE = "replication.trainserver"
TRAIN_MODULE = "replication.train"
FORWARDED_SIGNALS = (signal.SIGINT, signal.SIGTERM, signal.SIGHUP)
REQUEST_KEYS = {"argv", "cwd", "env", "command", "ignored"}
_LENGTH = struct.Struct(">I")


def request_bytes(argv: list[str], ignored: list[int]) -> bytes:
    """One request: the training arguments, the working folder, environment and command line, and
    the signals this process ignores (``nohup``), which the run then ignores too."""
    request = {"argv": argv, "cwd": os.getcwd(), "env": dict(os.environ), "command": list(sys.orig_argv),
               "ignored": ignored}  # fmt: skip
    payload = json.dumps(request).encode()
    return _LENGTH.pack(len(payload)) + payload


def read_request(conn: socket.socket) -> tuple[dict[str, Any], list[int]]:
    """The request on conn and the three standard-stream descriptors that came with it (server side)."""
    head, fds, _, _ = socket.recv_fds(conn, _LENGTH.size, 3)
    try:
        if len(head) != _LENGTH.size or len(fds) != 3:
            raise ValueError("a request without its length and three standard streams")
        (length,) = _LENGTH.unpack(head)
        payload = bytearray()
        while len(payload) < length:
            chunk = conn.recv(length - len(payload))
            if not chunk:
                raise ValueError("a request cut short")
            payload += chunk
        request = json.loads(payload)
        if not (isinstance(request, dict) and REQUEST_KEYS <= request.keys()):
            raise ValueError(f"a request without {sorted(REQUEST_KEYS)}")
    except BaseException:
        for fd in fds:
            os.close(fd)
        raise
    return request, fds


def _gone(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return True
    except PermissionError:
        return False
    return False


def _signal(pid: int, signum: int) -> None:
    try:
        os.kill(pid, signum)
    except ProcessLookupError:  # it has just ended: its exit code is on its way
        pass


def run_through_server(path: str, argv: list[str]) -> int | None:
    """The run's exit code, trained by the server at path; None when no server takes the request
    (none listening, or one that closed before starting the run)."""
    conn = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    try:
        conn.connect(path)
    except OSError:
        conn.close()
        return None
    child: int | None = None
    pending: list[int] = []

    def forward(signum: int, _frame: object) -> None:
        if child is None:
            pending.append(signum)  # sent once the server says which process is the run
        else:
            _signal(child, signum)

    ignored = [sig for sig in FORWARDED_SIGNALS if signal.getsignal(sig) is signal.SIG_IGN]
    previous = {sig: signal.signal(sig, forward) for sig in FORWARDED_SIGNALS if sig not in ignored}
    try:
        request = request_bytes(argv, [int(sig) for sig in ignored])
        socket.send_fds(conn, [request[: _LENGTH.size]], [0, 1, 2])
        conn.sendall(request[_LENGTH.size :])
        for line in conn.makefile("r", encoding="utf-8"):
            word, _, value = line.partition(" ")
            if word == "pid":
                child = int(value)
                for signum in pending:
                    _signal(child, signum)
            elif word == "exit":
                return int(value)
    except OSError:
        pass  # the server went away: below
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)
        conn.close()
    if child is None:
        return None  # it never started the run: this process trains it
    # the server died under a running run: wait until the run has let go of its folder, so that a
    # retry finds it free. On Linux the kernel has already sent the run SIGTERM (PR_SET_PDEATHSIG, set
    # in every child by the server), which checkpoints and stops it; a second SIGTERM would stop it at
    # once, before its checkpoint. Elsewhere nothing has told the run, so this process does.
    if not sys.platform.startswith("linux"):
        _signal(child, signal.SIGTERM)
    while not _gone(child):
        time.sleep(0.2)
    print(f"error: the training server at {path} ended during the run (pid {child}); its log says why. "
          "Run the job again: it resumes from the last checkpoint", file=sys.stderr)  # fmt: skip
    return 1


class TrainServer:
    """One server for the training jobs of one DAG: ``start()`` before the first, ``stop()`` after the last.

    ``start()`` makes a folder only this user may enter, binds a socket in it and listens before the
    server process exists, so a job may connect at once: its request waits in the socket's queue
    while the server imports torch. It then names the socket in this process's environment
    ($REPLICATION_TRAIN_SERVER), which every job started afterwards inherits. A server that cannot
    start is a warning: the jobs then train in processes of their own. ``stop()`` (also run at exit)
    ends the server, which lets running children finish first, and removes the folder.
    """

    def __init__(self, python: str, log: str | Path) -> None:
        self.python = python
        self.log = Path(log)
        self.folder: Path | None = None
        self.process: subprocess.Popen | None = None

    @property
    def path(self) -> str | None:
        return None if self.folder is None else str(self.folder / "socket")

    def start(self) -> bool:
        """Whether the server started; a warning on stderr when it did not."""
        try:
            self.folder = Path(tempfile.mkdtemp(prefix="replication-train-"))  # mode 0700
            self.log.parent.mkdir(parents=True, exist_ok=True)
            listener = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
            try:
                listener.bind(self.path)
                listener.listen(128)
                with self.log.open("ab") as log:
                    fd = listener.fileno()
                    self.process = subprocess.Popen(
                        [self.python, "-m", SERVER_MODULE, "--fd", str(fd), "--parent", str(os.getpid())],
                        pass_fds=[fd], stdin=subprocess.DEVNULL, stdout=log, stderr=subprocess.STDOUT,
                        start_new_session=True,  # a Ctrl-C reaches the jobs, which pass it on to their runs
                        env={**os.environ, "OPENBLAS_NUM_THREADS": "1"},  # no BLAS thread pool to fork from
                    )  # fmt: skip
            finally:
                listener.close()
        except OSError as error:
            print(f"warning: no warm training server ({error}); every training job starts its own process",
                  file=sys.stderr)  # fmt: skip
            self.stop()
            return False
        os.environ[SERVER_ENV] = self.path
        atexit.register(self.stop)
        return True

    def stop(self, timeout: float = 120.0) -> None:
        if self.path is not None and os.environ.get(SERVER_ENV) == self.path:
            del os.environ[SERVER_ENV]
        process, self.process = self.process, None
        if process is not None and process.poll() is None:
            process.terminate()
            try:
                process.wait(timeout)
            except subprocess.TimeoutExpired:  # its runs too: the server leads their process group
                os.killpg(process.pid, signal.SIGKILL)
                process.wait()
        if self.folder is not None:
            shutil.rmtree(self.folder, ignore_errors=True)


def main(argv: list[str] | None = None) -> int:
    args = list(sys.argv[1:] if argv is None else argv)
    path = os.environ.get(SERVER_ENV, "")
    if path:
        code = run_through_server(path, args)
        if code is not None:
            return code
        print(f"note: no training server answers at {path}; training in a process of its own",
              file=sys.stderr)  # fmt: skip
    sys.stderr.flush()
    flags = sys.orig_argv[1 : sys.orig_argv.index("-m")] if "-m" in sys.orig_argv else []  # -X, -W, ...
    os.execv(sys.executable, [sys.executable, *flags, "-m", TRAIN_MODULE, *args])
    return 1  # not reached


if __name__ == "__main__":
    sys.exit(main())
