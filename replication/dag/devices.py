"""The GPUs of one training job on this machine.

    python -m replication.dag.devices N [--of M] [--per-gpu K] -- COMMAND [ARG ...]

Snakemake counts the GPUs a job holds (its ``gpu`` resource) but neither limits them to the machine's
nor says which ones a job gets, so every job of a local DAG would land on GPU 0. Every training job
of the DAG runs under this command (``replication.dag.plan.Plan.launcher``). It takes N of the
machine's M GPUs for the job, sets ``CUDA_VISIBLE_DEVICES`` to them, and then becomes COMMAND: the
same process, so a signal meant for the job reaches the trainer itself.

A GPU is taken with an exclusive lock on a file of its own, in a folder every job of this user on
this machine shares (``lock_folder``). COMMAND and its children (torchrun's workers) inherit the
locks, and the locks end with the last of them. A job that finds fewer than N GPUs free waits until
enough are, saying so once. So however many jobs Snakemake starts (``--cores all`` with no config
file, the one-GPU profile, an 8-GPU node), no more ranks run on the GPUs than they hold, and each job
has its own.

- N = 0: ``CUDA_VISIBLE_DEVICES`` is set empty, so the job cannot take a GPU from those that need one.
- K (the global config's ``jobs_per_gpu``, 1 unless given) jobs may share a GPU, each holding one of
  its K slots: for small jobs that fit together on one device, as the GPU check's mini-DAG does.
- Under a cluster scheduler (``SLURM_JOB_ID`` is set), the scheduler has already given the job its
  devices: COMMAND runs as it is.
- M is the global config's ``gpus`` where it gives one; otherwise the devices ``CUDA_VISIBLE_DEVICES``
  already names, or all that ``nvidia-smi -L`` lists. A job that needs more than M is an error
  naming both, not a wait without end.
"""

from __future__ import annotations

import argparse
import fcntl
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from replication.runtime import cli
from replication.science.errors import ConfigError

WAIT_S = 2.0  # between attempts to find enough free GPUs
LOCKS_ENV = "REPLICATION_GPU_LOCKS"  # another folder for the locks (tests)


def lock_folder() -> Path:
    """Where the locks of this user's GPUs on this machine live."""
    default = Path(tempfile.gettempdir()) / f"replication-gpus-{os.getuid()}"
    folder = Path(os.environ.get(LOCKS_ENV, default))
    folder.mkdir(parents=True, exist_ok=True)
    return folder


def machine_devices(count: int | None) -> list[str]:
    """The device ids this machine offers the DAG: the first ``count`` of them where a count is given."""
    named = os.environ.get("CUDA_VISIBLE_DEVICES")
    if named is not None and named.strip():
        devices = [d.strip() for d in named.split(",") if d.strip()]
    elif count is not None:
        devices = [str(i) for i in range(count)]
    else:
        devices = [str(i) for i in range(_listed_gpus())]
    return devices if count is None else devices[:count]


def _listed_gpus() -> int:
    if shutil.which("nvidia-smi") is None:
        return 0
    listed = subprocess.run(["nvidia-smi", "-L"], capture_output=True, text=True, check=False)
    return (
        sum(line.startswith("GPU ") for line in listed.stdout.splitlines()) if listed.returncode == 0 else 0
    )


def take(
    needed: int, devices: list[str], folder: Path, per_gpu: int = 1
) -> tuple[list[str], list[int]] | None:
    """``needed`` of ``devices`` with a free slot (one of ``per_gpu`` locks each), with the open lock
    files that hold them; None (and nothing held) where fewer are free."""
    taken: list[str] = []
    held: list[int] = []
    for device in devices:
        if len(taken) == needed:
            break
        for slot in range(per_gpu):
            fd = os.open(folder / f"gpu{device}.{slot}.lock", os.O_RDWR | os.O_CREAT, 0o600)
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                os.close(fd)
                continue
            taken.append(device)
            held.append(fd)
            break
    if len(taken) < needed:
        for fd in held:
            os.close(fd)
        return None
    return taken, held


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else list(argv)
    ours, command = (argv[: argv.index("--")], argv[argv.index("--") + 1 :]) if "--" in argv else (argv, [])
    parser = cli.parser("replication.dag.devices", __doc__)
    parser.add_argument("needed", type=int, help="GPUs the job needs (0: none, and it may see none)")
    parser.add_argument("--of", type=int, default=None, help="the GPUs of this machine the DAG may use")
    parser.add_argument("--per-gpu", type=int, default=1, help="jobs that may share one GPU")
    args = parser.parse_args(ours)
    args.command = command
    return cli.run(_main, args)


def _main(args: argparse.Namespace) -> int:
    command = args.command
    if not command:
        raise ConfigError("no command to run: replication.dag.devices N -- COMMAND [ARG ...]")
    env = dict(os.environ)
    if args.needed == 0:
        env["CUDA_VISIBLE_DEVICES"] = ""
    elif "SLURM_JOB_ID" not in env:
        devices = machine_devices(args.of)
        if args.needed > len(devices):
            source = (
                f"the global config's gpus: {args.of}"
                if args.of is not None
                else ("CUDA_VISIBLE_DEVICES" if os.environ.get("CUDA_VISIBLE_DEVICES") else "nvidia-smi -L")
            )
            raise ConfigError(
                f"the job needs {args.needed} GPUs and this machine offers {len(devices)} ({source}): lower "
                "gpus_per_run and nproc_per_run in the global config, or run the scale on a larger machine "
                "or a cluster (profiles/slurm)"
            )
        folder, said = lock_folder(), False
        while (found := take(args.needed, devices, folder, max(1, args.per_gpu))) is None:
            if not said:
                print(
                    f"waiting for {args.needed} of {len(devices)} GPUs, held by other jobs", file=sys.stderr
                )
                said = True
            time.sleep(WAIT_S)
        taken, held = found
        for fd in held:
            os.set_inheritable(fd, True)  # held by COMMAND and its children until the last one ends
        env["CUDA_VISIBLE_DEVICES"] = ",".join(taken)
    sys.stdout.flush()
    sys.stderr.flush()
    os.execvpe(command[0], command, env)
    return 0  # not reached: exec replaced this process


if __name__ == "__main__":
    sys.exit(main())
