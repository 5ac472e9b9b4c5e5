"""A token data set, prepared once before any run reads it (the command: ``prepare``).

``prepare`` takes the options of one entry of an experiment file's ``datasets:`` (``DatasetOptions``),
tokenizes the text into modded-nanogpt shards (``replication.tasks.fineweb.shards``) and writes, into the
output folder, ``val_000000.bin``, ``train_000000.bin``, ... and, last, ``manifest.json``: the token and
document counts, the source, the tokenizer and the sha256 of every shard. The manifest marks the preparation
finished; running the command again with the same options does nothing.

After each finished shard, ``progress.json`` records the options, the source, how far the source was
read (documents, or the author's files) and the shards of each split. An interrupted preparation,
run again with the same options, keeps those shards, passes over the documents already read without
tokenizing them and continues, so that it ends with the same bytes as a preparation never
interrupted; the manifest is written last and ``progress.json`` then removed.

Sources, in this order:
- ``pretokenized``: the author's GPT-2 shards of FineWeb on the Hugging Face hub (modded-nanogpt's
  ``fineweb_val_000000.bin``, ``fineweb_train_000001.bin``, ...), cut to the token counts asked for;
- ``path``: a local JSON-lines (``.json``, ``.jsonl``, optionally ``.gz``) or parquet file with a
  text column, read through ``datasets`` exactly like the hub data set, when the file exists; with
  ``sha256`` set, its (decompressed) content must have that hash, or the command stops;
- ``hub``: a hub data set streamed through ``datasets`` (``HuggingFaceFW/fineweb``, ``sample-10BT``).
With none of them available the command stops at once and says both ways out.

Layout of the token stream (as modded-nanogpt's FineWeb script): each document is the separator
followed by its tokens, and documents follow each other in source order. The first ``val_tokens``
tokens form the validation split; the document that crosses that boundary is cut there and its rest
dropped, so no validation text reaches the training split. The following documents form the
training split, cut into shards of ``shard_tokens`` and capped at ``train_tokens``.
"""

from __future__ import annotations

import gzip
import hashlib
import itertools
import json
import os
import sys
import zlib
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import numpy as np
from pydantic import BaseModel, ConfigDict, Field, model_validator
from tqdm import tqdm

from replication.runtime.record import now, read_json, write_json_atomic
from replication.science.errors import ConfigError, DataError
from replication.tasks.fineweb.shards import (
    HEADER_INTS,
    MAGIC,
    VERSION,
    read_shard,
    shard_bytes,
    shard_token_count,
)
from replication.tasks.fineweb.tokenization import file_sha256, get_tokenizer

MANIFEST_NAME = "manifest.json"
PROGRESS_NAME = "progress.json"  # an interrupted preparation's state, removed once the manifest is written
PRETOKENIZED_SHARD_TOKENS = 100_000_000  # the author's shards: 100 M tokens each
ENCODE_BATCH_DOCUMENTS = 512


class DatasetOptions(BaseModel):
    """One entry of an experiment's ``datasets:``; an unknown key is an error."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    path: str | None = None  # local JSON-lines/parquet file; relative to --root
    sha256: str | None = Field(default=None, pattern="^[0-9a-f]{64}$")  # of path's decompressed content
    hub: str | None = None  # a hub data set streamed through `datasets`, e.g. HuggingFaceFW/fineweb
    hub_config: str | None = None  # e.g. sample-10BT
    hub_split: str = "train"
    pretokenized: str | None = None  # a hub repo of modded-nanogpt shards, e.g. kjj0/fineweb10B-gpt2
    text_field: str = "text"
    tokenizer: Literal["gpt2", "bytes"] = "gpt2"
    val_tokens: int = Field(gt=0)
    train_tokens: int | None = Field(default=None, gt=0)  # None: all the source has
    max_documents: int | None = Field(default=None, gt=0)  # read at most this many documents
    shard_tokens: int = Field(default=100_000_000, gt=0)

    @model_validator(mode="after")
    def _one_kind_of_source(self) -> DatasetOptions:
        if self.pretokenized is None and self.path is None and self.hub is None:
            raise ValueError("a data set needs a source: path, hub or pretokenized")
        if self.pretokenized is not None and (self.path is not None or self.hub is not None):
            raise ValueError("pretokenized shards exclude path and hub")
        if self.pretokenized is not None and self.tokenizer != "gpt2":
            raise ValueError("the author's pretokenized shards hold GPT-2 tokens: tokenizer must be gpt2")
        return self


class NoSourceError(DataError):
    """Neither the local file nor the hub can be read."""


class SourceHashError(DataError):
    """The local file is there but is not the file the data set names (damaged or replaced)."""


# -- where the text comes from -------------------------------------------------------------------


def hub_reachable(timeout: float = 5.0) -> bool:
    """False in offline mode (HF_HUB_OFFLINE, HF_DATASETS_OFFLINE), else whether the hub answers a HEAD
    request without an error status.

    The request goes through huggingface_hub's own HTTP session, the one its downloads use, so it
    takes the same route: through the proxy that HTTPS_PROXY / HTTP_PROXY / NO_PROXY name, if any.
    """
    for variable in ("HF_HUB_OFFLINE", "HF_DATASETS_OFFLINE"):
        if os.environ.get(variable, "").strip().lower() in ("1", "true", "yes", "on"):
            return False
    from huggingface_hub import constants, get_session

    try:
        return get_session().head(constants.ENDPOINT, timeout=timeout).status_code < 400  # httpx or requests
    except Exception:  # no route, refused, timed out, a proxy or TLS failure: all mean "not from here"
        return False


def _no_source_message(name: str, options: DatasetOptions, local: Path | None) -> str:
    wanted = options.pretokenized or options.hub or "HuggingFaceFW/fineweb"
    where = f"at {local}" if local is not None else "and name it in the data set's `path` option"
    if local is not None and options.sha256 is not None:
        where += (
            f" (the file this data set names, content sha256 {options.sha256}: in a clone, "
            f"git checkout -- {options.path} restores it)"
        )
    return (
        f"data set {name!r}: no source can be read here. Two ways out: put a local JSON-lines or parquet "
        "file "
        f"with a {options.text_field!r} column {where}, or run where the Hugging Face hub is reachable "
        f"(network access, HF_HUB_OFFLINE and HF_DATASETS_OFFLINE unset) to stream {wanted}"
        + ("" if options.hub or options.pretokenized else " (and set the data set's `hub` option)")
        + "."
    )


def content_sha256(path: Path, chunk: int = 1 << 20) -> str:
    """sha256 of a file's content, decompressed first when its name ends in ``.gz``."""
    path = Path(path)
    if path.suffix.lower() != ".gz":
        return file_sha256(path, chunk)
    digest = hashlib.sha256()
    with gzip.open(path, "rb") as handle:
        while block := handle.read(chunk):
            digest.update(block)
    return digest.hexdigest()


def resolve_source(name: str, options: DatasetOptions, root: Path) -> dict[str, Any]:
    """The source this preparation will read, as recorded in the manifest; fails at once if none.

    A local file named with a ``sha256`` is read only if its content has that hash: a damaged or
    replaced file is an error, never silently a different data set (nor a silent fall-back to the hub).
    """
    local = None if options.path is None else (root / options.path).resolve()
    if options.pretokenized is None and local is not None and local.is_file():
        source = {"kind": "local", "path": str(local), "sha256": file_sha256(local)}
        if options.sha256 is not None:
            try:
                actual = content_sha256(local)
            except (OSError, EOFError, zlib.error) as error:  # gzip.BadGzipFile is an OSError
                actual = f"unreadable ({error})"
            if actual != options.sha256:
                raise SourceHashError(
                    f"data set {name!r}: {local} is not the expected file: its content has sha256 {actual}, "
                    f"the data set names {options.sha256}. Restore it (in a clone: git checkout -- "
                    f"{options.path}) or, to use another file on purpose, change the data set's sha256."
                )
            source["content_sha256"] = actual
        return source
    if (options.pretokenized or options.hub) and hub_reachable():
        if options.pretokenized:
            return {"kind": "pretokenized", "repo": options.pretokenized}
        return {
            "kind": "hub",
            "dataset": options.hub,
            "config": options.hub_config,
            "split": options.hub_split,
        }
    raise NoSourceError(_no_source_message(name, options, local))


def _local_loader(path: Path) -> str:
    suffixes = [s.lower() for s in path.suffixes]
    if ".parquet" in suffixes:
        return "parquet"
    if ".json" in suffixes or ".jsonl" in suffixes:
        return "json"
    raise ConfigError(f"{path}: a local source must be JSON-lines (.json, .jsonl) or parquet (.parquet)")


def iter_texts(source: dict[str, Any], options: DatasetOptions) -> Iterator[str]:
    """The documents' texts in source order, streamed through `datasets` (local file or hub)."""
    import datasets  # a second or more to import: only when documents are read

    if source["kind"] == "local":
        path = Path(source["path"])
        stream = datasets.load_dataset(
            _local_loader(path), data_files=str(path), split="train", streaming=True
        )
    else:
        stream = datasets.load_dataset(
            source["dataset"], name=source["config"], split=source["split"], streaming=True
        )
    for i, example in enumerate(stream):
        if options.max_documents is not None and i >= options.max_documents:
            return
        if options.text_field not in example:
            raise ConfigError(f"the source has no {options.text_field!r} column; it has {sorted(example)}")
        yield example[options.text_field]


def _batches(items: Iterator[str], size: int) -> Iterator[list[str]]:
    batch: list[str] = []
    for item in items:
        batch.append(item)
        if len(batch) == size:
            yield batch
            batch = []
    if batch:
        yield batch


def _with_separator(encoded: list[list[int]], separator: int) -> Iterator[np.ndarray]:
    for ids in encoded:
        document = np.empty(len(ids) + 1, dtype=np.int64)
        document[0] = separator
        document[1:] = ids
        yield document


def iter_documents(
    source: dict[str, Any], options: DatasetOptions, threads: int, skip: int = 0
) -> Iterator[np.ndarray]:
    """Each document as separator + tokens, (n,) int64, in source order, encoded in batches; the first
    ``skip`` documents (those an interrupted preparation already wrote) are read but not tokenized.

    Reading and encoding take turns: the encoder already keeps ``threads`` cores busy, and on a
    machine with no core to spare, reading in parallel only adds contention (measured).
    """
    tokenizer = get_tokenizer(options.tokenizer, threads)
    texts = itertools.islice(iter_texts(source, options), skip, None)
    for batch in _batches(texts, ENCODE_BATCH_DOCUMENTS):
        yield from _with_separator(tokenizer.encode_batch(batch), tokenizer.separator)


def iter_pretokenized(repo: str, split: str, files: list[str]) -> Iterator[np.ndarray]:
    """Tokens of the author's shards of one split, downloaded (and cached) by huggingface_hub, after
    those of the split that ``files`` already names (the files an interrupted preparation read)."""
    from huggingface_hub import hf_hub_download

    start = 0 if split == "val" else 1  # modded-nanogpt numbers the validation shard 0
    index = start + sum(name.startswith(f"fineweb_{split}_") for name in files)
    while True:
        filename = f"fineweb_{split}_{index:06d}.bin"
        try:
            path = hf_hub_download(repo_id=repo, filename=filename, repo_type="dataset")
        except Exception as error:
            if index > start:
                return  # past the last shard of the repository
            raise NoSourceError(f"{repo}: cannot download {filename}: {error}") from error
        files.append(filename)
        yield np.asarray(read_shard(Path(path)), dtype=np.int64)
        index += 1


# -- writing shards --------------------------------------------------------------------------------


@dataclass
class SplitWriter:
    """Cuts a token stream into shards of ``shard_tokens``; a finished shard is never rewritten.

    ``state()`` is what a rerun needs to go on after the last finished shard (``SplitWriter(...,
    **state)``). Right after a shard is finished, the tokens not yet in a shard are the tail of the
    document (or file) taken last; the rerun reads that one again and hands it to ``carry``.
    """

    out: Path
    split: str
    shard_tokens: int
    limit: int | None  # stop after this many tokens
    tokens: int = 0
    documents: int = 0
    shards: list[dict[str, Any]] = field(default_factory=list)
    finished: bool = False
    _buffer: list[np.ndarray] = field(default_factory=list)
    _buffered: int = 0

    @property
    def full(self) -> bool:
        return self.limit is not None and self.tokens >= self.limit

    @property
    def pending(self) -> int:
        """Tokens taken but not yet in a finished shard."""
        return self.tokens - sum(shard["tokens"] for shard in self.shards)

    def state(self) -> dict[str, Any]:
        return {
            "tokens": self.tokens,
            "documents": self.documents,
            "shards": self.shards,
            "finished": self.finished,
        }

    def carry(self, tokens: np.ndarray | None) -> None:
        """Take back, after a rerun restored the state, the pending tail of ``tokens``: the document (or
        file) taken last before the interruption, read again."""
        pending = self.pending
        if tokens is None or tokens.size < pending:
            raise DataError(
                f"{self.out}: the source no longer holds the tokens its interrupted preparation recorded; "
                f"delete {self.out} to prepare the data set again"
            )
        self._buffer, self._buffered = [tokens[tokens.size - pending :]], pending

    def add(self, tokens: np.ndarray, *, document: bool = True) -> int:
        """Append tokens (cut at the limit); returns how many were taken."""
        if self.limit is not None:
            tokens = tokens[: self.limit - self.tokens]
        if tokens.size == 0:
            return 0
        self.tokens += tokens.size
        self.documents += int(document)
        self._buffer.append(tokens)
        self._buffered += tokens.size
        while self._buffered >= self.shard_tokens:
            self._flush(self.shard_tokens)
        return tokens.size

    def finish(self) -> dict[str, Any]:
        """Write the last, partial shard (an empty one for an empty split); the split takes nothing more."""
        if not self.finished and (self._buffered or not self.shards):
            self._flush(self._buffered)
        self.finished = True
        return {"tokens": self.tokens, "documents": self.documents, "shards": self.shards}

    def _flush(self, count: int) -> None:
        joined = np.concatenate(self._buffer) if self._buffer else np.zeros(0, dtype=np.int64)
        head, rest = joined[:count], joined[count:]
        self._buffer, self._buffered = ([rest] if rest.size else []), rest.size
        name = f"{self.split}_{len(self.shards):06d}.bin"
        self.shards.append(
            {"file": name, "tokens": int(head.size), "sha256": _write_once(self.out / name, head)}
        )


def _write_once(path: Path, tokens: np.ndarray) -> str:
    """Write a shard unless an identical one is already there; a different one is an error."""
    data = shard_bytes(tokens)
    digest = hashlib.sha256(data).hexdigest()
    if path.exists():
        if file_sha256(path) != digest:
            raise DataError(
                f"{path} exists with other tokens than this preparation produces (the source or the options "
                f"changed); delete {path.parent} to prepare the data set again"
            )
        return digest
    tmp = path.with_suffix(path.suffix + ".tmp")
    tmp.write_bytes(data)
    tmp.replace(path)
    return digest


# -- the preparation -----------------------------------------------------------------------------


def prepare(
    name: str,
    options: DatasetOptions,
    out: Path,
    *,
    root: Path = Path("."),
    threads: int = 1,
    progress: bool | None = None,
) -> dict[str, Any]:
    """Prepare one data set into ``out``; returns its manifest (the existing one if already done).

    An interrupted preparation of the same data set with the same options and source continues from
    its ``progress.json``; one with others is refused.
    """
    out = Path(out)
    manifest_path = out / MANIFEST_NAME
    wanted = options.model_dump(mode="json")
    if manifest_path.exists():
        manifest = json.loads(manifest_path.read_text())
        if manifest.get("dataset") != name or manifest.get("options") != wanted:
            raise ConfigError(
                f"{out} holds data set {manifest.get('dataset')!r} prepared with other options; "
                f"delete {out} (or choose another --out) to prepare {name!r}"
            )
        return manifest
    source = resolve_source(name, options, Path(root))
    out.mkdir(parents=True, exist_ok=True)
    tokenizer = get_tokenizer(options.tokenizer, threads)
    progress_path = out / PROGRESS_NAME
    identity = {"dataset": name, "options": wanted, "source": dict(source)}
    position: dict[str, Any] = {}  # how far the source was read when the last shard was finished
    states: dict[str, dict[str, Any]] = {}
    if progress_path.exists():
        recorded = read_json(progress_path)
        if {key: recorded.get(key) for key in identity} != identity:
            raise ConfigError(
                f"{out} holds an interrupted preparation of data set {recorded.get('dataset')!r} with other "
                f"options or another source ({progress_path}); delete {out} (or choose another --out) "
                f"to prepare {name!r}"
            )
        position, states = recorded["position"], recorded["splits"]
        recorded_files = {shard["file"] for state in states.values() for shard in state["shards"]}
        for path in [*out.glob("val_??????.bin"), *out.glob("train_??????.bin")]:
            if path.name not in recorded_files:
                path.unlink()  # written after the last progress record: written again below
    val = SplitWriter(out, "val", options.shard_tokens, options.val_tokens, **states.get("val", {}))
    train = SplitWriter(out, "train", options.shard_tokens, options.train_tokens, **states.get("train", {}))
    total = None if options.train_tokens is None else options.val_tokens + options.train_tokens
    bar_mode = sys.stderr.isatty() if progress is None else progress  # a log file gets a line every 30 s
    bar = tqdm(
        total=total,
        unit="tok",
        unit_scale=True,
        desc=f"prepare {name}",
        file=sys.stderr,
        mininterval=1.0 if bar_mode else 30.0,
        initial=val.tokens + train.tokens,
    )

    def take(writer: SplitWriter, tokens: np.ndarray, document: bool) -> None:
        """Add tokens to a split, finish it once full, and record the progress after a finished shard."""
        before = len(writer.shards)
        bar.update(writer.add(tokens, document=document))
        if writer.full:
            writer.finish()
        if len(writer.shards) > before:
            write_json_atomic(
                progress_path,
                {**identity, "position": position, "splits": {"val": val.state(), "train": train.state()}},
            )

    if source["kind"] == "pretokenized":
        source["files"] = position["files"] = list(position.get("files", []))
        for writer in (val, train):
            if writer.finished:
                continue
            stream = iter_pretokenized(source["repo"], writer.split, source["files"])
            if writer.pending:  # the file whose tail the last finished shard left over: read it again
                source["files"].pop()
                writer.carry(next(stream, None))
            for tokens in stream:
                take(writer, tokens, document=False)
                if writer.finished:
                    break
            if writer is val:
                val.finish()  # the validation split ends with its files, the training split below
    else:
        position.setdefault("documents", 0)
        active = train if val.finished else val
        carried = int(active.pending > 0)  # the last document read has tokens in no finished shard
        documents = iter_documents(source, options, threads, skip=position["documents"] - carried)
        if carried:
            active.carry(next(documents, None))
        for document in documents:
            position["documents"] += 1
            take(train if val.finished else val, document, document=True)
            if train.finished:
                break
    bar.close()
    splits = {"val": val.finish(), "train": train.finish()}
    for split, info in splits.items():
        if info["tokens"] == 0:
            raise DataError(f"data set {name!r}: the source ran out before the {split} split got any token")
    manifest = {
        "dataset": name,
        "options": wanted,
        "source": source,
        "tokenizer": {"name": tokenizer.name, "n_vocab": tokenizer.n_vocab, "separator": tokenizer.separator},
        "format": {"header_ints": HEADER_INTS, "magic": MAGIC, "version": VERSION, "dtype": "uint16"},
        "splits": splits,
        "prepared_at": now(),
    }
    write_json_atomic(manifest_path, manifest)
    progress_path.unlink(missing_ok=True)
    return manifest


def load_manifest(folder: Path, experiment: str | None = None) -> dict[str, Any]:
    """The manifest of a prepared data set, after checking every shard's header against it.

    ``experiment`` (the name of the experiment whose config declares the data set) goes into the
    command the message of a missing data set offers.
    """
    folder = Path(folder)
    path = folder / MANIFEST_NAME
    config = f"experiments/{experiment}/config.yaml" if experiment else "experiments/<experiment>/config.yaml"
    prepare_command = (
        f"python -m replication.tasks.fineweb.prepare {config} --dataset {folder.name} --out {folder}"
    )
    if not path.is_file():
        raise DataError(
            f"the data set {folder.name} is not prepared ({path} is missing): "
            f"prepare it with {prepare_command}, "
            "or run the DAG, which prepares it (a train command's --data-root says where prepared data lives)"
        )
    manifest = read_json(path)
    try:
        for split in ("val", "train"):
            for shard in manifest["splits"][split]["shards"]:
                count = shard_token_count(folder / shard["file"])
                if count != shard["tokens"]:
                    raise DataError(
                        f"{folder / shard['file']} holds {count} tokens, "
                        f"the manifest says {shard['tokens']}: "
                        f"delete {folder} and prepare it again with {prepare_command}"
                    )
    except (KeyError, TypeError) as error:
        raise DataError(
            f"{path} is not a manifest of this version (no {error}); delete {folder} and prepare it again"
        ) from None
    return manifest
