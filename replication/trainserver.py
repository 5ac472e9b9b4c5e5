"""The warm process behind ``python -m replication.launch``: ``python -m replication.trainserver --fd N``.

It imports the training loop and torch's compiler once, then waits on the listening Unix socket it
inherits as descriptor N (``launch.TrainServer`` creates it). For each request it forks a child that
takes the requester's stdin, stdout and stderr, working folder, environment and command line, and
runs ``replication.train.main`` with its arguments. It tells the requester the child's process id
(so that signals reach the run) and, when the child ends, its exit code (128 + the signal's number
when a signal ended it).

It is single-threaded, so every fork comes from a quiet process, and it never runs a tensor
operation itself, so no child inherits a started thread pool. Signals are blocked across each fork,
so that one sent to a child before it has taken the run's own handlers waits for them. A child dies
with the server (``PR_SET_PDEATHSIG``: SIGTERM, which checkpoints). A requester that disappears (its
job killed) gets its run stopped with SIGTERM too. On SIGTERM or SIGINT, or when the process that
started it is gone, it stops accepting, lets running children finish, and exits. A request it cannot
read, or a fork that fails, is logged and refused; the requester then trains on its own.
"""

from __future__ import annotations

import argparse
import atexit
import ctypes
import os
import selectors
import signal
import socket
import sys
import tempfile
import traceback
from datetime import UTC, datetime

import torch._dynamo  # noqa: F401 - what every run's first optimizer imports (torch._compile): paid here once

from replication import train
from replication.launch import read_request

POLL_S = 0.2
PR_SET_PDEATHSIG = 1  # <linux/prctl.h>
STOP_SIGNALS = {signal.SIGINT, signal.SIGTERM, signal.SIGHUP}


def _log(text: str) -> None:
    try:
        print(f"{datetime.now(UTC).isoformat(timespec='seconds')} {text}", flush=True)
    except OSError:  # a full disk must not end the server
        pass


def _die_with_parent(parent: int) -> None:
    """SIGTERM this process when its parent (the server) dies; exit now if it already has (Linux)."""
    try:
        ctypes.CDLL(None, use_errno=True).prctl(PR_SET_PDEATHSIG, int(signal.SIGTERM), 0, 0, 0)
    except (OSError, AttributeError):
        return
    if os.getppid() != parent:
        os._exit(128 + int(signal.SIGTERM))


class Server:
    def __init__(self, listener: socket.socket, parent: int) -> None:
        self.listener = listener
        self.listener.setblocking(False)
        self.selector = selectors.DefaultSelector()
        self.selector.register(listener, selectors.EVENT_READ)
        self.children: dict[int, socket.socket | None] = {}  # pid -> its requester (None once it is gone)
        self.parent = parent  # the process that started it (given: it may be gone by now)
        self.stop_requested = False
        self.accepting = True

    def serve(self) -> None:
        for sig in (signal.SIGTERM, signal.SIGINT):
            signal.signal(sig, self._request_stop)
        _log(f"serving on descriptor {self.listener.fileno()} (pid {os.getpid()})")
        while self.accepting or self.children:
            for key, _ in self.selector.select(timeout=POLL_S):
                try:
                    if key.fileobj is self.listener:
                        self._accept()
                    else:
                        self._check_requester(key.fileobj, key.data)
                except Exception as error:  # noqa: BLE001 - one bad request must not end the others' runs
                    _log(f"error: {type(error).__name__}: {error}")
            self._reap()
            if self.accepting and (self.stop_requested or os.getppid() != self.parent):
                self._stop_accepting()
        _log("stopped")

    def _request_stop(self, _signum: int, _frame: object) -> None:
        self.stop_requested = True

    def _stop_accepting(self) -> None:
        self.accepting = False
        self.selector.unregister(self.listener)
        self.listener.close()
        _log(f"no longer accepting; {len(self.children)} run(s) still going")

    def _accept(self) -> None:
        try:
            conn, _ = self.listener.accept()
        except BlockingIOError:
            return
        conn.setblocking(True)
        conn.settimeout(30)
        try:
            request, fds = read_request(conn)
        except (OSError, ValueError) as error:
            _log(f"refused a request: {error}")
            conn.close()
            return
        sys.stdout.flush()
        sys.stderr.flush()
        server = os.getpid()
        blocked = signal.pthread_sigmask(signal.SIG_BLOCK, STOP_SIGNALS)
        try:
            pid = os.fork()
        except OSError as error:
            signal.pthread_sigmask(signal.SIG_SETMASK, blocked)
            _log(f"refused a request: cannot fork ({error})")
            for fd in fds:
                os.close(fd)
            conn.close()
            return
        if pid == 0:
            self._child(conn, request, fds, server, blocked)  # never returns
        signal.pthread_sigmask(signal.SIG_SETMASK, blocked)
        for fd in fds:
            os.close(fd)
        conn.settimeout(None)
        self.children[pid] = conn
        _log(f"pid {pid}: {' '.join(request['argv'])}")
        try:
            conn.sendall(f"pid {pid}\n".encode())
        except OSError:
            self._requester_gone(conn, pid)
            return
        self.selector.register(conn, selectors.EVENT_READ, pid)

    def _check_requester(self, conn: socket.socket, pid: int) -> None:
        """A requester sends nothing after its request: readable means it is gone."""
        try:
            gone = conn.recv(1) == b""
        except OSError:
            gone = True
        if gone:
            self.selector.unregister(conn)
            self._requester_gone(conn, pid)

    def _requester_gone(self, conn: socket.socket, pid: int) -> None:
        conn.close()
        self.children[pid] = None
        _log(f"pid {pid}: its requester is gone; stopping the run")
        try:
            os.kill(pid, signal.SIGTERM)
        except ProcessLookupError:
            pass

    def _reap(self) -> None:
        while self.children:
            try:
                pid, status = os.waitpid(-1, os.WNOHANG)
            except ChildProcessError:
                return
            if pid == 0:
                return
            code = os.waitstatus_to_exitcode(status)
            code = 128 - code if code < 0 else code  # -signal -> 128 + signal, as a shell reports it
            conn = self.children.pop(pid, None)
            _log(f"pid {pid}: exit {code}")
            if conn is not None:
                self.selector.unregister(conn)
                try:
                    conn.sendall(f"exit {code}\n".encode())
                except OSError:
                    pass
                conn.close()

    def _child(self, conn: socket.socket, request: dict, fds: list[int], server: int, mask: set) -> None:
        code = 1
        try:
            _die_with_parent(server)
            for sig in (signal.SIGTERM, signal.SIGHUP):
                signal.signal(sig, signal.SIG_DFL)
            signal.signal(signal.SIGINT, signal.default_int_handler)
            for signum in request["ignored"]:  # the requester's (nohup), as a process of its own would
                signal.signal(signum, signal.SIG_IGN)
            signal.pthread_sigmask(signal.SIG_SETMASK, mask)  # a signal sent since the fork arrives now
            self.selector.close()
            self.listener.close()
            conn.close()
            for other in self.children.values():
                if other is not None:
                    other.close()
            for target, fd in enumerate(fds):
                os.dup2(fd, target)
                os.close(fd)
            sys.stdout.reconfigure(line_buffering=os.isatty(1))
            os.chdir(request["cwd"])
            os.environ.clear()
            os.environ.update(request["env"])
            sys.orig_argv = list(request["command"])  # the provenance's command: the job's own
            sys.argv = ["replication.train", *request["argv"]]
            tempfile.tempdir = None  # the job's TMPDIR, not the one the server's imports cached
            code = train.main(request["argv"])
        except SystemExit as stop:  # argparse's usage errors
            if isinstance(stop.code, int) or stop.code is None:
                code = stop.code or 0
            else:
                print(stop.code, file=sys.stderr)
                code = 1
        except BaseException:  # noqa: BLE001 - the child must end here, whatever happened
            traceback.print_exc()
        finally:
            try:
                atexit._run_exitfuncs()  # what the interpreter runs at exit (torch's compile workers)
            except Exception:  # noqa: BLE001, S110 - the run's exit code stands
                pass
            for stream in (sys.stdout, sys.stderr):
                try:
                    stream.flush()
                except Exception:  # noqa: BLE001, S110 - a closed stream has nothing to flush
                    pass
            os._exit(code)


def main(argv: list[str] | None = None) -> int:
    summary = __doc__.split("\n\n")[0]
    parser = argparse.ArgumentParser(prog="python -m replication.trainserver", description=summary)
    parser.add_argument("--fd", type=int, required=True, help="the listening Unix socket, inherited")
    parser.add_argument("--parent", type=int, default=None, help="stop once this process is gone")
    args = parser.parse_args(argv)
    listener = socket.socket(fileno=args.fd)
    Server(listener, args.parent or os.getppid()).serve()
    return 0


if __name__ == "__main__":
    sys.exit(main())
