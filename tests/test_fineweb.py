"""FineWeb pretraining: shards, the preparation command, the loader, and the experiment's config."""

import gzip
import json
import os
from contextlib import nullcontext

import numpy as np
import pytest
import torch

from replication.config.base import ConfigError
from replication.config.plan import load_plan
from replication.config.report import load_report_spec
from replication.config.run import load_experiment, resolve_run_config
from replication.reporting.rq1 import cycle_statistics
from replication.runtime.record import read_metrics
from replication.science.errors import DataError
from replication.tasks.fineweb import data as fineweb_data
from replication.tasks.fineweb.data import (
    PROGRESS_NAME,
    DatasetOptions,
    NoSourceError,
    SourceHashError,
    content_sha256,
    hub_reachable,
    load_manifest,
    prepare,
)
from replication.tasks.fineweb.prepare import main
from replication.tasks.fineweb.shards import (
    HEADER_BYTES,
    MAGIC,
    ShardError,
    read_shard,
    shard_token_count,
    write_shard,
)
from replication.tasks.fineweb.task import TokenStream
from replication.tasks.fineweb.tokenization import ByteTokenizer, file_sha256, get_tokenizer
from replication.training.train import train

from .conftest import REPO

EXPERIMENT = REPO / "experiments" / "fineweb_pretrain" / "config.yaml"
SAMPLE = REPO / "experiments" / "fineweb_pretrain" / "sample" / "fineweb_sample.jsonl.gz"
DOCS = ["alpha beta gamma", "delta", "épsilon zeta eta theta", "iota kappa", "lambda mu nu xi omicron"]


def byte_stream(docs):
    """The token stream of the preparation: separator 256 in front of each document's bytes."""
    return [t for doc in docs for t in (256, *doc.encode("utf-8"))]


@pytest.fixture
def jsonl(tmp_path):
    path = tmp_path / "docs.jsonl"
    path.write_text("".join(json.dumps({"id": i, "text": t}) + "\n" for i, t in enumerate(DOCS)))
    return path


def options(path, **kw):
    return DatasetOptions(**{"path": str(path), "tokenizer": "bytes", "val_tokens": 20, **kw})


# -- shards --------------------------------------------------------------------------------------


def test_shard_is_a_modded_nanogpt_header_then_uint16_tokens(tmp_path):
    tokens = np.array([50256, 0, 1, 65535, 7])
    write_shard(tmp_path / "s.bin", tokens)
    raw = (tmp_path / "s.bin").read_bytes()
    header = np.frombuffer(raw[:HEADER_BYTES], dtype="<i4")
    assert header[:3].tolist() == [MAGIC, 1, 5] and not header[3:].any()
    assert np.frombuffer(raw[HEADER_BYTES:], dtype="<u2").tolist() == tokens.tolist()
    assert read_shard(tmp_path / "s.bin").tolist() == tokens.tolist()


def test_truncated_or_foreign_files_are_not_shards(tmp_path):
    write_shard(tmp_path / "s.bin", np.arange(10))
    (tmp_path / "cut.bin").write_bytes((tmp_path / "s.bin").read_bytes()[:-2])
    with pytest.raises(ShardError, match="announces 10 tokens"):
        shard_token_count(tmp_path / "cut.bin")
    (tmp_path / "other.bin").write_bytes(b"\0" * 2048)
    with pytest.raises(ShardError, match="magic"):
        read_shard(tmp_path / "other.bin")
    with pytest.raises(ValueError, match="65535"):
        write_shard(tmp_path / "big.bin", np.array([1 << 16]))


# -- preparation ---------------------------------------------------------------------------------


def test_preparation_layout_validation_first_then_training_shards(jsonl, tmp_path):
    out = tmp_path / "data"
    manifest = prepare("toy", options(jsonl, shard_tokens=16), out, progress=False)
    stream = byte_stream(DOCS)
    assert [s["tokens"] for s in manifest["splits"]["val"]["shards"]] == [16, 4]
    val = np.concatenate([read_shard(out / s["file"]) for s in manifest["splits"]["val"]["shards"]]).tolist()
    assert val == stream[:20]  # the second document is cut at the boundary ...
    rest = byte_stream(DOCS[2:])  # ... and its tail is dropped: training starts at the next document
    train_tokens = np.concatenate(
        [read_shard(out / s["file"]) for s in manifest["splits"]["train"]["shards"]]
    )
    assert train_tokens.tolist() == rest
    shards = manifest["splits"]["train"]["shards"]
    assert [s["tokens"] for s in shards[:-1]] == [16] * (len(shards) - 1) and 0 < shards[-1]["tokens"] <= 16
    assert all(file_sha256(out / s["file"]) == s["sha256"] for s in shards)
    assert manifest["splits"]["val"]["documents"] == 2 and manifest["splits"]["train"]["documents"] == 3
    assert manifest["tokenizer"] == {"name": "bytes", "n_vocab": 257, "separator": 256}
    assert manifest["source"] == {"kind": "local", "path": str(jsonl.resolve()), "sha256": file_sha256(jsonl)}
    assert load_manifest(out) == manifest


def test_training_tokens_and_documents_can_be_capped(jsonl, tmp_path):
    capped = prepare("toy", options(jsonl, train_tokens=30), tmp_path / "a", progress=False)
    assert capped["splits"]["train"]["tokens"] == 30
    few = prepare("toy", options(jsonl, max_documents=3), tmp_path / "b", progress=False)
    assert few["splits"]["train"]["tokens"] == len(byte_stream(DOCS[2:3]))


def test_parquet_source_gives_the_same_tokens(jsonl, tmp_path):
    import pandas as pd

    parquet = tmp_path / "docs.parquet"
    pd.DataFrame({"text": DOCS}).to_parquet(parquet)
    a = prepare("toy", options(jsonl), tmp_path / "a", progress=False)
    b = prepare("toy", options(parquet), tmp_path / "b", progress=False)
    assert [s["sha256"] for s in a["splits"]["train"]["shards"]] == [
        s["sha256"] for s in b["splits"]["train"]["shards"]
    ]


def test_a_finished_preparation_is_not_redone_and_shards_are_never_rewritten(jsonl, tmp_path):
    out = tmp_path / "data"
    prepare("toy", options(jsonl), out, progress=False)
    stamps = {p.name: p.stat().st_mtime_ns for p in out.iterdir()}
    assert prepare("toy", options(jsonl), out, progress=False)["dataset"] == "toy"
    assert {p.name: p.stat().st_mtime_ns for p in out.iterdir()} == stamps
    with pytest.raises(ConfigError, match="other options"):
        prepare("toy", options(jsonl, val_tokens=21), out, progress=False)
    # an interrupted preparation (no manifest) resumes, keeping identical shards ...
    (out / "manifest.json").unlink()
    prepare("toy", options(jsonl), out, progress=False)
    assert (out / "train_000000.bin").stat().st_mtime_ns == stamps["train_000000.bin"]
    # ... and refuses to mix its shards with different ones
    (out / "manifest.json").unlink()
    write_shard(out / "train_000000.bin", np.arange(5))
    with pytest.raises(DataError, match="delete"):
        prepare("toy", options(jsonl), out, progress=False)


# documents of 12 to 42 bytes: with 16-token shards, most documents end one shard and start the next
MANY = [f"document {i:02d} " + "word " * (i % 7) for i in range(40)]


def interrupt_after(monkeypatch, documents):
    """Make the next preparations stop (KeyboardInterrupt) once they have taken that many documents."""
    real = fineweb_data.iter_documents

    def stopping(*args, **kwargs):
        for taken, document in enumerate(real(*args, **kwargs)):
            if taken == documents:
                raise KeyboardInterrupt
            yield document

    monkeypatch.setattr(fineweb_data, "iter_documents", stopping)


def same_output(a, b):
    """The two folders hold the same files, byte for byte; the manifests differ only in their date."""
    assert sorted(p.name for p in a.iterdir()) == sorted(p.name for p in b.iterdir())
    for path in a.glob("*.bin"):
        assert path.read_bytes() == (b / path.name).read_bytes(), path.name
    manifests = [json.loads((folder / "manifest.json").read_text()) for folder in (a, b)]
    assert [{**m, "prepared_at": None} for m in manifests] == [{**manifests[0], "prepared_at": None}] * 2


def test_an_interrupted_preparation_continues_without_tokenizing_again_and_ends_byte_for_byte_the_same(
    tmp_path, monkeypatch
):
    source = tmp_path / "many.jsonl"
    source.write_text("".join(json.dumps({"text": t}) + "\n" for t in MANY))
    opts = options(source, val_tokens=50, shard_tokens=16)
    whole = tmp_path / "whole"
    prepare("toy", opts, whole, progress=False)
    monkeypatch.setattr(fineweb_data, "ENCODE_BATCH_DOCUMENTS", 3)  # batches that straddle the skipped ones
    encoded = []
    encode = ByteTokenizer.encode_batch
    monkeypatch.setattr(
        ByteTokenizer, "encode_batch", lambda self, texts: encoded.extend(texts) or encode(self, texts)
    )
    carried = set()
    for stop in (2, 3, 9, 25, 39):  # in the validation split, at its end, then in the training split
        out = tmp_path / f"stopped_{stop}"
        with monkeypatch.context() as patch:
            interrupt_after(patch, stop)
            with pytest.raises(KeyboardInterrupt):
                prepare("toy", opts, out, progress=False)
        assert not (out / "manifest.json").exists()
        progress = json.loads((out / PROGRESS_NAME).read_text())
        read = progress["position"]["documents"]
        assert 0 < read <= stop and progress["splits"]["val"]["shards"]
        # the document read last, when its tail is in no finished shard yet, is the one read again
        tail = any(s["tokens"] > sum(f["tokens"] for f in s["shards"]) for s in progress["splits"].values())
        carried.add(tail)
        if stop == 25:  # a shard written after the last progress record is written again
            write_shard(out / f"train_{len(progress['splits']['train']['shards']):06d}.bin", np.arange(5))
        encoded.clear()
        prepare("toy", opts, out, progress=False)
        assert encoded == MANY[read - tail :]  # the documents before were not tokenized again
        same_output(out, whole)
        assert not (out / PROGRESS_NAME).exists()  # removed once the manifest is written
    assert carried == {True, False}  # both ways of continuing were taken


def test_an_interrupted_preparation_of_the_authors_shards_continues_from_the_file_it_stopped_in(
    tmp_path, monkeypatch
):
    import huggingface_hub

    hub = tmp_path / "hub"
    hub.mkdir()
    write_shard(hub / "fineweb_val_000000.bin", np.arange(30))
    for index in range(1, 5):
        write_shard(hub / f"fineweb_train_{index:06d}.bin", np.arange(25) + 100 * index)
    downloaded = []

    def download(repo_id, filename, repo_type):
        if not (hub / filename).exists():
            raise FileNotFoundError(filename)
        downloaded.append(filename)
        return str(hub / filename)

    monkeypatch.setattr(huggingface_hub, "hf_hub_download", download)
    monkeypatch.setattr(fineweb_data, "hub_reachable", lambda: True)
    real = fineweb_data.iter_pretokenized
    for val_tokens in (20, 40):  # less than the author's validation file holds, and more
        opts = DatasetOptions(
            pretokenized="author/shards", val_tokens=val_tokens, train_tokens=90, shard_tokens=8
        )
        whole = tmp_path / f"whole_{val_tokens}"
        prepare("toy", opts, whole, progress=False)
        for stop in (1, 2, 3, 4):  # files taken before the interruption, over both splits
            taken = []

            def stopping(*args, stop=stop, taken=taken):
                for tokens in real(*args):
                    if len(taken) == stop:
                        raise KeyboardInterrupt
                    taken.append(1)
                    yield tokens

            out = tmp_path / f"stopped_{val_tokens}_{stop}"
            with monkeypatch.context() as patch:
                patch.setattr(fineweb_data, "iter_pretokenized", stopping)
                with pytest.raises(KeyboardInterrupt):
                    prepare("toy", opts, out, progress=False)
            files = json.loads((out / PROGRESS_NAME).read_text())["position"]["files"]
            downloaded.clear()
            prepare("toy", opts, out, progress=False)
            assert files and not set(downloaded) & set(files[:-1])  # at most the last file is read again
            same_output(out, whole)


def test_an_interrupted_preparation_is_not_continued_with_other_options(tmp_path, monkeypatch):
    source = tmp_path / "many.jsonl"
    source.write_text("".join(json.dumps({"text": t}) + "\n" for t in MANY))
    out = tmp_path / "out"
    with monkeypatch.context() as patch:
        interrupt_after(patch, 10)
        with pytest.raises(KeyboardInterrupt):
            prepare("toy", options(source, val_tokens=50, shard_tokens=16), out, progress=False)
    assert (out / PROGRESS_NAME).exists()
    with pytest.raises(ConfigError, match="interrupted preparation") as error:
        prepare("toy", options(source, val_tokens=50, shard_tokens=32), out, progress=False)
    assert f"delete {out} (or choose another --out)" in str(error.value)
    with pytest.raises(ConfigError, match="interrupted preparation"):
        prepare("other", options(source, val_tokens=50, shard_tokens=16), out, progress=False)


def test_the_hub_check_asks_through_huggingface_hubs_own_session(monkeypatch):
    import httpx2
    import huggingface_hub
    from huggingface_hub import constants

    asked = []

    def session_answering(outcome):
        class Session:
            def head(self, url, timeout):
                asked.append((url, timeout))
                if isinstance(outcome, BaseException):
                    raise outcome
                return outcome

        return lambda: Session()

    monkeypatch.delenv("HF_HUB_OFFLINE", raising=False)
    monkeypatch.delenv("HF_DATASETS_OFFLINE", raising=False)
    for outcome, reachable in [
        (httpx2.Response(200), True),
        (httpx2.Response(407), False),  # a proxy that wants credentials
        (httpx2.Response(502), False),  # a proxy with no route to the hub
        (httpx2.ConnectError("no route"), False),
        (httpx2.ConnectTimeout("timed out"), False),
        (OSError("network unreachable"), False),
    ]:
        monkeypatch.setattr(huggingface_hub, "get_session", session_answering(outcome))
        assert hub_reachable(timeout=2.5) is reachable, outcome
    assert asked == [(constants.ENDPOINT, 2.5)] * 6
    asked.clear()
    for variable in ("HF_HUB_OFFLINE", "HF_DATASETS_OFFLINE"):
        with monkeypatch.context() as patch:
            patch.setenv(variable, "1")
            patch.setattr(huggingface_hub, "get_session", session_answering(httpx2.Response(200)))
            assert hub_reachable() is False
    assert asked == []  # offline mode asks nothing


def test_prepare_takes_only_a_positive_thread_count(capsys):
    for bad, message in (("0", "must be at least 1, got 0"), ("two", "must be a whole number, got 'two'")):
        with pytest.raises(SystemExit):
            main([str(EXPERIMENT), "--dataset", "x", "--out", "x", "--threads", bad])
        assert f"argument --threads: {message}" in capsys.readouterr().err


def test_without_a_local_file_or_the_hub_the_preparation_fails_at_once_naming_both_ways(
    tmp_path, monkeypatch
):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    missing = options(tmp_path / "absent.jsonl", hub="HuggingFaceFW/fineweb", hub_config="sample-10BT")
    with pytest.raises(NoSourceError) as error:
        prepare("toy", missing, tmp_path / "out", progress=False)
    message = str(error.value)
    assert str(tmp_path / "absent.jsonl") in message and "'text' column" in message
    assert "hub is reachable" in message and "HuggingFaceFW/fineweb" in message
    assert not (tmp_path / "out").exists()


def test_cli_prepares_a_data_set_of_an_experiment_file(jsonl, tmp_path, monkeypatch, capsys):
    spec = tmp_path / "experiment.yaml"
    spec.write_text(
        json.dumps(
            {
                "experiment": "toy",
                "methods": {"ce": {}},
                "scales": {},
                "datasets": {"toy": {"path": jsonl.name, "tokenizer": "bytes", "val_tokens": 20}},
            }
        )
    )
    assert main([str(spec), "--dataset", "toy", "--out", str(tmp_path / "out"), "--root", str(tmp_path)]) == 0
    assert (tmp_path / "out" / "manifest.json").exists()
    assert main([str(spec), "--dataset", "nope", "--out", str(tmp_path / "x")]) == 2
    assert "no data set 'nope'" in capsys.readouterr().err
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    assert (
        main(
            [
                str(spec),
                "--dataset",
                "toy",
                "--out",
                str(tmp_path / "y"),
                "--root",
                str(tmp_path / "elsewhere"),
            ]
        )
        == 2
    )
    assert "Two ways out" in capsys.readouterr().err


def test_a_compressed_source_gives_the_same_tokens_and_its_content_hash_is_checked(jsonl, tmp_path):
    packed = tmp_path / "docs.jsonl.gz"
    packed.write_bytes(gzip.compress(jsonl.read_bytes()))
    digest = file_sha256(jsonl)  # the hash of the decompressed content, as the data set names it
    plain = prepare("toy", options(jsonl), tmp_path / "plain", progress=False)
    good = prepare("toy", options(packed, sha256=digest), tmp_path / "packed", progress=False)
    assert good["source"]["content_sha256"] == digest
    for split in ("val", "train"):
        assert [s["sha256"] for s in good["splits"][split]["shards"]] == [
            s["sha256"] for s in plain["splits"][split]["shards"]
        ]
    # one byte changed inside the compressed stream: refused before anything is written
    packed.write_bytes(gzip.compress(jsonl.read_bytes().replace(b"alpha", b"alphA")))
    with pytest.raises(SourceHashError, match="git checkout") as error:
        prepare("toy", options(packed, sha256=digest), tmp_path / "damaged", progress=False)
    assert str(packed) in str(error.value) and digest in str(error.value)
    assert not (tmp_path / "damaged").exists()
    whole = gzip.compress(jsonl.read_bytes())
    damaged = [whole[:40]]  # truncated; then single bytes flipped inside the deflate stream
    damaged += [whole[:i] + bytes([whole[i] ^ 0xFF]) + whole[i + 1 :] for i in range(12, len(whole) - 8, 7)]
    for data in damaged:  # EOFError, BadGzipFile or zlib.error inside gzip: all the same message
        packed.write_bytes(data)
        with pytest.raises(SourceHashError, match="is not the expected file"):
            prepare("toy", options(packed, sha256=digest), tmp_path / "damaged", progress=False)


def test_the_project_ships_its_fineweb_sample_with_the_hash_the_data_set_names():
    data = load_experiment(EXPERIMENT).datasets["fineweb_sample_bytes"]
    assert (REPO / data["path"]).resolve() == SAMPLE.resolve()  # relative to the repository root
    assert content_sha256(SAMPLE) == data["sha256"]
    readme = (SAMPLE.parent / "README.md").read_text()
    assert data["sha256"] in readme and "ODC-By 1.0" in readme and (SAMPLE.parent / "LICENSE.md").is_file()
    with gzip.open(SAMPLE, "rt") as handle:
        documents = [json.loads(line) for line in handle]
    assert [d["id"] for d in documents] == list(range(300)) and all(d["text"] for d in documents)


def test_real_fineweb_text_through_gpt2_bpe(tmp_path):
    sample = SAMPLE
    with gzip.open(sample, "rt") as handle:
        first, second = (json.loads(handle.readline())["text"] for _ in range(2))
    opts = DatasetOptions(path=str(sample), tokenizer="gpt2", val_tokens=1000, max_documents=20)
    manifest = prepare("sample", opts, tmp_path, progress=False)
    val = read_shard(tmp_path / "val_000000.bin").tolist()
    tokenizer = get_tokenizer("gpt2")
    (ids,) = tokenizer.encode_batch([first])  # 717 tokens: the first document fits, the second is cut
    assert val[0] == 50256 and val[1 : 1 + len(ids)] == ids and val[1 + len(ids)] == 50256
    assert tokenizer.decode(val[1 : 1 + len(ids)]) == first
    assert second.startswith(tokenizer.decode(val[2 + len(ids) :])) and len(val) == 1000
    assert manifest["source"]["sha256"] == file_sha256(sample)
    assert manifest["splits"]["val"]["documents"] == 2 and manifest["splits"]["train"]["documents"] == 18


# -- the loader ----------------------------------------------------------------------------------


def numbered_shards(*lengths):
    start, shards = 0, []
    for n in lengths:
        shards.append(np.arange(start, start + n))
        start += n
    return shards


def test_chunks_are_contiguous_sequential_and_cycle_over_the_shards():
    # chunks of 4 + 1 tokens: the 3-token shard holds none, the 7-token shard one
    stream = TokenStream(numbered_shards(25, 3, 7, 31), chunk_tokens=4)
    starts = [int(stream.chunk(j)[0]) for j in range(stream.chunks_per_pass + 2)]
    assert starts == [0, 4, 8, 12, 16, 20, 28, 35, 39, 43, 47, 51, 55, 59, 0, 4]  # tails skipped, then again
    assert stream.chunk(5).tolist() == [20, 21, 22, 23, 24]  # 5 tokens: inputs and next-token targets


def test_a_split_too_small_for_one_chunk_is_a_config_error():
    with pytest.raises(ConfigError, match="seq_len"):
        TokenStream(numbered_shards(10), chunk_tokens=16)


# -- the experiment ------------------------------------------------------------------------------


def test_every_run_of_the_experiment_resolves_and_names_a_declared_data_set():
    spec = load_experiment(EXPERIMENT)
    for data in spec.datasets.values():
        DatasetOptions.model_validate(data)
    for scale, scale_spec in spec.scales.items():
        for method in (
            scale_spec.methods if scale_spec.study_of else spec.methods
        ):  # a study's arm: its methods
            config = resolve_run_config(spec, scale, method, scale_spec.seeds[0])
            assert config.task.dataset in spec.datasets
            assert (config.alignment.every > 0) == (method == "ce"), (scale, method)
        assert len(scale_spec.seeds) >= (
            3 if (scale_spec.study_of or scale) != "smoke" else 2
        )  # a study: its scale's


def test_paper_scale_is_section_5():
    config = resolve_run_config(EXPERIMENT, "paper", "gapt", 0)
    assert config.train.steps == 1750 and config.train.eval_every == 125
    assert config.task.seq_len * config.task.micro_batch_size * config.train.grad_accum == 1_048_576
    assert config.task.val_tokens == 10_485_760
    m = config.model
    assert (m.n_layer, m.d_model, m.n_head, m.head_dim, m.vocab_size) == (12, 768, 6, 128, 50304)
    assert (m.window_start, m.window_end, m.window_multiple) == (64, 1792, 64)
    assert (config.gapt.patience_memorize, config.gapt.patience_compress) == (125, 125)
    assert config.objective.patch_size == 8 and config.objective.lambda_mbe == 20
    data = load_experiment(EXPERIMENT).datasets[config.task.dataset]
    assert data["train_tokens"] == 800_000_000 and data["tokenizer"] == "gpt2"
    assert (data["hub"], data["hub_config"]) == ("HuggingFaceFW/fineweb", "sample-10BT")


@pytest.fixture(scope="module")
def sample_bytes(tmp_path_factory):
    """The smoke scale's data set, prepared from the FineWeb sample shipped with the project."""
    root = tmp_path_factory.mktemp("data")
    data = dict(load_experiment(EXPERIMENT).datasets["fineweb_sample_bytes"], path=str(SAMPLE))
    prepare(
        "fineweb_sample_bytes",
        DatasetOptions.model_validate(data),
        root / "fineweb_sample_bytes",
        progress=False,
    )
    return root


def test_training_batches_are_next_token_pairs_and_validation_windows_split_among_processes(sample_bytes):
    from replication.tasks.fineweb.task import Task

    config = resolve_run_config(EXPERIMENT, "smoke", "ce", 0)
    task = Task(config, torch.device("cpu"), data_root=sample_bytes)
    batch = task.train_batch(3, 1)
    assert batch.inputs.shape == (4, 64) and torch.equal(batch.inputs[:, 1:], batch.targets[:, :-1])
    assert torch.equal(batch.inputs[1:, 0], batch.targets[:-1, -1])  # rows are consecutive text
    assert torch.equal(task.train_batch(3, 1).inputs, batch.inputs)  # a pure function of (step, micro)
    assert not torch.equal(task.train_batch(3, 0).inputs, batch.inputs)
    whole = torch.cat([b.inputs for b in task.validation_batches()])
    halves = [Task(config, torch.device("cpu"), rank=r, world_size=2, data_root=sample_bytes) for r in (0, 1)]
    shared = [torch.cat([b.inputs for b in h.validation_batches()]) for h in halves]
    assert whole.shape[0] == 1024 // 64 == shared[0].shape[0] + shared[1].shape[0]
    assert torch.equal(torch.cat(shared).sort(dim=0).values, whole.sort(dim=0).values)


def test_evaluation_runs_in_the_precision_it_is_handed(sample_bytes):
    """The loop decides the run's precision once (replication.runtime.precision) and hands it to the task."""
    from replication.runtime.precision import autocast_for

    val_ce = {}
    for dtype in ("float32", "bfloat16"):
        autocast = autocast_for(dtype, torch.device("cpu"))
        metrics = _random_model_metrics(0, 1, str(sample_bytes), autocast=autocast)["metrics"]
        val_ce[dtype] = metrics["val/ce"]
    assert val_ce["bfloat16"] != val_ce["float32"]
    assert val_ce["bfloat16"] == pytest.approx(val_ce["float32"], rel=1e-2)


@pytest.mark.slow
def test_smoke_scale_ce_run_reports_validation_and_rq1_metrics(sample_bytes, tmp_path):
    config = resolve_run_config(EXPERIMENT, "smoke", "ce", 0)
    summary = train(config, tmp_path, data_root=sample_bytes, show_progress=False)
    metrics = summary["metrics"]
    assert metrics["best/val/ce"] <= metrics["final/val/ce"] < np.log(257) - 2  # it learned
    assert metrics["best/val/ce_step"] in (10, 20, 30)
    records = read_metrics(tmp_path / "metrics.jsonl")
    final_by_layer = [r for r in records if r["kind"] == "eval"][-1]["val/mbe_by_layer"]
    assert len(final_by_layer) == 6
    assert metrics["final/val/mbe_alternate_layers"] == pytest.approx(np.mean(final_by_layer[2:4]))
    assert metrics["final/val/mbe_joint_layers"] == pytest.approx(np.mean(final_by_layer[1:5]))
    # RQ1's statistics come at aggregation, as the experiment file declares, from the run's own records
    assert not [key for key in metrics if key.startswith("rq1/")]
    declared = load_report_spec(EXPERIMENT).reporting_for("smoke").rq1
    plan, _ = load_plan(EXPERIMENT.parent / "plan.yaml")
    rq1 = cycle_statistics(records, time_constant=declared.time_constant, seed=0, plan=plan.rq1)
    assert rq1["rq1/smoothing_beta"] == pytest.approx(np.exp(-2 / 5))  # every 2 steps, smoke's tau of 5
    assert rq1["rq1/points"] == 14 and 0 <= rq1["rq1/min_sign_fraction"] <= 0.5
    assert 0 < rq1["rq1/autocorr_p_persistent"] <= 1 and 0 < rq1["rq1/autocorr_p_alternating"] <= 1
    assert "rq1/excess_sign_changes" not in rq1  # no verdict rests on the noise baseline
    assert metrics["speed/tokens_per_s"] > 0


def _evaluate_on_rank(rank: int, world: int, port: int, data_root: str, out: str) -> None:
    os.environ.update(RANK=str(rank), WORLD_SIZE=str(world), MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    torch.set_num_threads(1)
    torch.distributed.init_process_group("gloo")
    try:
        torch.save(_random_model_metrics(rank, world, data_root), os.path.join(out, f"rank{rank}.pt"))
    finally:
        torch.distributed.destroy_process_group()


def _random_model_metrics(rank: int, world: int, data_root: str, config=None, autocast=nullcontext):
    """Validation metrics of a randomly initialized smoke model, and this process's batches of steps
    0 and 1."""
    from replication.models import build_model
    from replication.tasks.fineweb.task import Task

    config = config or resolve_run_config(EXPERIMENT, "smoke", "ce", 0)
    torch.manual_seed(0)
    model = build_model(config.model)
    with torch.no_grad():
        for p in model.parameters():  # the zero-initialized head would predict uniformly
            p.normal_(0.0, 0.3)
    task = Task(config, torch.device("cpu"), rank=rank, world_size=world, data_root=data_root)
    batches = [
        task.train_batch(step, micro).inputs for step in (0, 1) for micro in range(config.train.grad_accum)
    ]
    return {"metrics": task.evaluate(model, step=0, window=64, autocast=autocast), "batches": batches}


@pytest.mark.slow
def test_two_gloo_processes_read_the_same_stream_and_evaluate_like_one(sample_bytes, tmp_path):
    import socket

    import torch.multiprocessing as mp

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    mp.spawn(_evaluate_on_rank, args=(2, port, str(sample_bytes), str(tmp_path)), nprocs=2, join=True)
    ranks = [torch.load(tmp_path / f"rank{r}.pt") for r in (0, 1)]
    alone = _random_model_metrics(0, 1, str(sample_bytes))
    # micro-batch (step, micro) is the same tokens whichever process asks and however many there are;
    # the loop gives each process its share of a step's micro-batch indices
    for r in ranks:
        assert all(torch.equal(a, b) for a, b in zip(r["batches"], alone["batches"]))
    assert not torch.equal(alone["batches"][0], alone["batches"][1])
    for r in ranks:  # the sums are reduced over processes: both report the whole validation set
        assert r["metrics"]["val/ce"] == pytest.approx(alone["metrics"]["val/ce"], rel=1e-6)
        assert r["metrics"]["val/mbe_by_layer"] == pytest.approx(
            alone["metrics"]["val/mbe_by_layer"], rel=1e-5
        )
    assert alone["metrics"]["val/ce"] > 0.5 + np.log(320)  # a random model, not a uniform one
