"""Token shards in the modded-nanogpt format (docs/SPEC.md section 5).

A shard is a 256 x int32 header (magic 20240520, version 1, token count, then zeros) followed by the
tokens as little-endian uint16. Readers map the file instead of loading it.
"""

from __future__ import annotations

import hashlib
import os
from pathlib import Path

import numpy as np

from replication.science.errors import DataError

MAGIC = 20240520
VERSION = 1
HEADER_INTS = 256
HEADER_BYTES = HEADER_INTS * 4
TOKEN_DTYPE = np.dtype("<u2")


class ShardError(DataError, ValueError):
    """A file that is not a complete shard of this format."""


def shard_bytes(tokens: np.ndarray) -> bytes:
    """The bytes of a shard holding ``tokens`` (1-D, every id < 65536)."""
    tokens = np.asarray(tokens)
    if tokens.ndim != 1:
        raise ValueError(f"a shard holds a 1-D token array, got shape {tokens.shape}")
    if tokens.size and (tokens.min() < 0 or tokens.max() >= 1 << 16):
        raise ValueError("token ids must lie in 0..65535 to be stored as uint16")
    header = np.zeros(HEADER_INTS, dtype="<i4")
    header[:3] = (MAGIC, VERSION, tokens.size)
    return header.tobytes() + tokens.astype(TOKEN_DTYPE).tobytes()


def write_shard(path: Path, tokens: np.ndarray) -> str:
    """Write a shard atomically (a reader never sees half a file); returns its sha256."""
    data = shard_bytes(tokens)
    path = Path(path)
    tmp = path.with_suffix(path.suffix + ".tmp")
    with tmp.open("wb") as handle:
        handle.write(data)
        handle.flush()
        os.fsync(handle.fileno())
    tmp.replace(path)
    return hashlib.sha256(data).hexdigest()


def shard_token_count(path: Path) -> int:
    """Token count from the header, after checking magic, version and file size."""
    path = Path(path)
    size = path.stat().st_size
    if size < HEADER_BYTES:
        raise ShardError(f"{path}: {size} bytes, shorter than the {HEADER_BYTES}-byte header")
    header = np.fromfile(path, dtype="<i4", count=HEADER_INTS)
    if header[0] != MAGIC or header[1] != VERSION:
        raise ShardError(f"{path}: header starts {header[:2].tolist()}, not magic {MAGIC} version {VERSION}")
    count = int(header[2])
    if size != HEADER_BYTES + count * TOKEN_DTYPE.itemsize:
        raise ShardError(f"{path}: {size} bytes, but the header announces {count} tokens")
    return count


def read_shard(path: Path) -> np.ndarray:
    """The tokens of a shard, memory-mapped read-only: (n,) uint16."""
    count = shard_token_count(path)
    return np.memmap(path, dtype=TOKEN_DTYPE, mode="r", offset=HEADER_BYTES, shape=(count,))
