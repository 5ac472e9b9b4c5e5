"""Training runs forked from one warm process: ``python -m replication.launch RUN/config.yaml [ARGS]``.

A smoke-scale run trains for about a second, and one of the forgetting experiment's MLP runs for a
few; a new Python process spends about two more importing torch and building its first optimizer
(which imports torch's compiler). ``replication.trainserver`` pays that once per DAG: it waits on a
Unix socket and, for each request, forks a child that runs ``python -m replication.train``'s
``main(ARGS)`` with the requester's working folder, environment and standard streams.

This command is the requester. It takes the same arguments as ``python -m replication.train``, hands
its stdin, stdout and stderr to the child, passes SIGINT, SIGTERM and SIGHUP on to it, and exits
with its exit code: to its caller (a Snakemake job) it is the training process. With no server
named in ``$REPLICATION_TRAIN_SERVER``, or none answering there, it becomes ``python -m
replication.train ARGS`` itself (exec), after one line on stderr when a server was named. The run is
the same either way: training reads nothing the server set up, and its provenance records this
command.

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
from pathlib import Path

SERVER_ENV = "REPLICATION_TRAIN_SERVER"
SERVER_MODULE = "replication.trainserver"
TRAIN_MODULE = "replication.train"
FORWARDED_SIGNALS = (signal.SIGINT, signal.SIGTERM, signal.SIGHUP)
_LENGTH = struct.Struct(">I")


def request_bytes(argv: list[str]) -> bytes:
    """One request: the training arguments, and the working folder, environment and command line."""
    payload = json.dumps(
        {"argv": argv, "cwd": os.getcwd(), "env": dict(os.environ), "command": list(sys.orig_argv)}
    ).encode()
    return _LENGTH.pack(len(payload)) + payload


def read_request(conn: socket.socket) -> tuple[dict, list[int]]:
    """The request on conn and the three standard-stream descriptors that came with it (server side)."""
    head, fds, _, _ = socket.recv_fds(conn, _LENGTH.size, 3)
    if len(head) != _LENGTH.size or len(fds) != 3:
        for fd in fds:
            os.close(fd)
        raise ValueError("a request without its length and three standard streams")
    (length,) = _LENGTH.unpack(head)
    payload = bytearray()
    while len(payload) < length:
        chunk = conn.recv(length - len(payload))
        if not chunk:
            for fd in fds:
                os.close(fd)
            raise ValueError("a request cut short")
        payload += chunk
    return json.loads(payload), fds


def run_through_server(path: str, argv: list[str]) -> int | None:
    """The run's exit code, trained by the server at path; None when no server answers there."""
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
            os.kill(child, signum)

    previous = {sig: signal.signal(sig, forward) for sig in FORWARDED_SIGNALS}
    try:
        request = request_bytes(argv)
        socket.send_fds(conn, [request[: _LENGTH.size]], [0, 1, 2])
        conn.sendall(request[_LENGTH.size :])
        replies = conn.makefile("r", encoding="utf-8")
        for line in replies:
            word, _, value = line.partition(" ")
            if word == "pid":
                child = int(value)
                for signum in pending:
                    os.kill(child, signum)
            elif word == "exit":
                return int(value)
    except OSError as error:
        print(f"error: the training server at {path} failed: {error}", file=sys.stderr)
        return 1
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)
        conn.close()
    print(f"error: the training server at {path} stopped before the run ended; its log says why", file=sys.stderr)
    return 1


class TrainServer:
    """One server for the training jobs of one DAG: ``start()`` before the first, ``stop()`` after the last.

    ``start()`` names the socket in this process's environment ($REPLICATION_TRAIN_SERVER), which
    every job started afterwards inherits. The socket sits in a folder only this user may enter. ``start()`` binds it and listens before the
    server process exists, so a job may connect at once: its request waits in the socket's queue
    while the server imports torch. ``stop()`` (also run at exit) ends the server, which lets running
    children finish first, and removes the folder.
    """

    def __init__(self, python: str, log: str | Path, folder: str | Path | None = None) -> None:
        self.python = python
        self.log = Path(log)
        self.folder = Path(folder or Path(tempfile.gettempdir()) / f"replication-train-{os.getpid()}")
        self.path = str(self.folder / "socket")
        self.process: subprocess.Popen | None = None

    def start(self) -> None:
        shutil.rmtree(self.folder, ignore_errors=True)  # a stale one from an earlier process of this id
        self.folder.mkdir(mode=0o700, parents=True)
        self.log.parent.mkdir(parents=True, exist_ok=True)
        listener = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        try:
            listener.bind(self.path)
            listener.listen(128)
            with self.log.open("ab") as log:
                self.process = subprocess.Popen(
                    [self.python, "-m", SERVER_MODULE, "--fd", str(listener.fileno())],
                    pass_fds=[listener.fileno()], stdin=subprocess.DEVNULL, stdout=log, stderr=subprocess.STDOUT,
                    start_new_session=True,  # a Ctrl-C reaches the jobs, which pass it on to their runs
                )
        finally:
            listener.close()
        os.environ[SERVER_ENV] = self.path  # every job started from now on inherits it
        atexit.register(self.stop)

    def stop(self, timeout: float = 120.0) -> None:
        if os.environ.get(SERVER_ENV) == self.path:
            del os.environ[SERVER_ENV]
        process, self.process = self.process, None
        if process is not None and process.poll() is None:
            process.terminate()
            try:
                process.wait(timeout)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait()
        shutil.rmtree(self.folder, ignore_errors=True)



def main(argv: list[str] | None = None) -> int:
    args = list(sys.argv[1:] if argv is None else argv)
    path = os.environ.get(SERVER_ENV, "")
    if path:
        code = run_through_server(path, args)
        if code is not None:
            return code
        print(f"note: no training server answers at {path}; training in a process of its own", file=sys.stderr)
    sys.stderr.flush()
    os.execv(sys.executable, [sys.executable, "-m", TRAIN_MODULE, *args])
    return 1  # not reached


if __name__ == "__main__":
    sys.exit(main())
