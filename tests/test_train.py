import json
import math
import os
import signal
import subprocess
import sys
import time

import pytest
import torch

from replication.config.base import ConfigError
from replication.config.run import write_run_config
from replication.runtime.record import read_metrics
from replication.science.errors import RunFolderError
from replication.science.gapt import Phase
from replication.science.methods import METHODS, default_layers
from replication.training.objectives import micro_batch_kind, plan_layers
from replication.training.train import NonFiniteLossError, Trainer, main, train

from .conftest import REPO, tiny_config

QUICK_PLATEAU = {"gapt": {"delta_ce": 0.05, "patience_memorize": 3, "patience_compress": 3}}
TIMING_KEYS = {"time", "step_time", "at", "provenance"}


@pytest.fixture(scope="module")
def method_runs(tmp_path_factory):
    """One tiny run per method, same seed, on a task tuned to plateau quickly."""
    torch.set_num_threads(1)
    runs = {}
    for method in METHODS:
        run_dir = tmp_path_factory.mktemp(method)
        runs[method] = (run_dir, train(tiny_config(method, **QUICK_PLATEAU), run_dir, show_progress=False))
    return runs


def strip_timing(records):
    return [
        {k: v for k, v in r.items() if k not in TIMING_KEYS} for r in records if r.get("event") != "resume"
    ]


@pytest.mark.parametrize("method", list(METHODS))
def test_every_method_finishes_with_finite_losses_and_all_files(method_runs, method):
    run_dir, summary = method_runs[method]
    assert (run_dir / "metrics.jsonl").exists() and (run_dir / "summary.json").exists()
    assert not (run_dir / "checkpoint.pt").exists()  # not needed once the summary is written
    records = read_metrics(run_dir / "metrics.jsonl")
    train_records = [r for r in records if r["kind"] == "train"]
    assert [r["step"] for r in train_records] == list(range(30))
    assert all(math.isfinite(r["train/ce"]) for r in train_records)
    assert all(len(r["train/mbe_by_layer"]) == 6 for r in train_records)
    assert [r["step"] for r in records if r["kind"] == "eval"] == [0, 10, 20, 30]
    assert train_records[-1]["tokens"] == 30 * 2 * 4 * 32
    for key in ("git_commit", "git_dirty", "torch", "python", "device"):
        assert key in summary["provenance"]
    assert summary["wall_time_s"] > 0 and summary["peak_memory_bytes"] > 0
    assert math.isfinite(summary["metrics"]["final/val/ce"])
    assert summary["metrics"]["final/val/ce"] < math.log(32)  # it learned something


@pytest.mark.parametrize("method", ["gapt", "gapt_joint"])
def test_gapt_records_phase_changes(method_runs, method):
    run_dir, summary = method_runs[method]
    assert summary["phase_changes"] >= 1 and not summary["never_changed_phase"]
    records = read_metrics(run_dir / "metrics.jsonl")
    events = [r for r in records if r.get("event") == "phase_change"]
    assert (
        events[0]["from"] == "memorize"
        and events[0]["to"] == "compress"
        and events[0]["reason"] == "ce_plateau"
    )
    phases = {r["step"]: r["phase"] for r in records if r["kind"] == "train"}
    assert phases[events[0]["step"] + 1] == "compress"  # the change applies from the next step
    assert all(r["s_m"] >= 0 and "e_min" in r for r in records if r["kind"] == "train")


def test_ce_records_no_phase_change(method_runs):
    run_dir, summary = method_runs["ce"]
    assert summary["phase_changes"] == 0 and summary["compress_steps"] == 0
    assert {r["phase"] for r in read_metrics(run_dir / "metrics.jsonl") if r["kind"] == "train"} == {
        "memorize"
    }


def test_ce_mbe_lowers_mbe_against_ce(method_runs):
    ce = method_runs["ce"][1]["metrics"]["final/val/mbe"]
    ce_mbe = method_runs["ce_mbe"][1]["metrics"]["final/val/mbe"]
    assert ce_mbe < 0.5 * ce


def test_same_seed_same_data_same_memorize_steps(method_runs):
    """Before its first phase change a GAPT run is the ce run, step for step."""
    ce = [r for r in read_metrics(method_runs["ce"][0] / "metrics.jsonl") if r["kind"] == "train"]
    gapt = [r for r in read_metrics(method_runs["gapt"][0] / "metrics.jsonl") if r["kind"] == "train"]
    first_change = method_runs["gapt"][1]["phase_change_steps"][0]
    assert [r["train/ce"] for r in ce[: first_change + 1]] == [
        r["train/ce"] for r in gapt[: first_change + 1]
    ]
    assert ce[first_change + 2]["train/ce"] != gapt[first_change + 2]["train/ce"]


@pytest.mark.parametrize("background", [False, True], ids=["written-in-step", "written-in-background"])
def test_resume_after_a_kill_equals_the_uninterrupted_run(tmp_path, monkeypatch, background):
    """Also with the periodic checkpoints written from a thread, as on a GPU."""
    config = tiny_config("gapt", train={"steps": 30, "checkpoint_every": 4}, **QUICK_PLATEAU)
    train(config, tmp_path / "whole", show_progress=False)

    import replication.training.train as loop

    class Checkpointer(loop.Checkpointer):
        def __init__(self, *args, **kwargs):
            super().__init__(*args, **{**kwargs, "background": background})

    monkeypatch.setattr(loop, "Checkpointer", Checkpointer)

    real = loop.accumulate_gradients

    def dies_at_step_26(*args, **kwargs):
        if kwargs["step"] == 26:
            raise KeyboardInterrupt("simulated kill")
        return real(*args, **kwargs)

    monkeypatch.setattr(loop, "accumulate_gradients", dies_at_step_26)
    with pytest.raises(KeyboardInterrupt):
        train(config, tmp_path / "killed", show_progress=False)
    assert (tmp_path / "killed" / "checkpoint.pt").exists() and not (
        tmp_path / "killed" / "summary.json"
    ).exists()
    killed_records = read_metrics(tmp_path / "killed" / "metrics.jsonl")
    assert max(r["step"] for r in killed_records if r["kind"] == "train") == 25  # steps after the checkpoint

    monkeypatch.setattr(loop, "accumulate_gradients", real)
    assert torch.load(tmp_path / "killed" / "checkpoint.pt", weights_only=False)["next_step"] == 24
    summary = train(config, tmp_path / "killed", show_progress=False)
    assert summary["resumes"] == 1
    whole = read_metrics(tmp_path / "whole" / "metrics.jsonl")
    resumed = read_metrics(tmp_path / "killed" / "metrics.jsonl")
    assert strip_timing(resumed) == strip_timing(whole)  # bit-identical losses, MBE, phases, evals
    assert any(r.get("event") == "resume" and r["step"] == 24 for r in resumed)
    assert (
        summary["phase_change_steps"]
        == json.loads((tmp_path / "whole" / "summary.json").read_text())["phase_change_steps"]
    )


def test_a_finished_run_is_not_retrained(method_runs):
    run_dir, summary = method_runs["ce"]
    before = (run_dir / "metrics.jsonl").stat().st_mtime_ns
    assert train(tiny_config("ce", **QUICK_PLATEAU), run_dir, show_progress=False) == json.loads(
        (run_dir / "summary.json").read_text()
    )
    assert (run_dir / "metrics.jsonl").stat().st_mtime_ns == before


def test_the_summary_holds_the_models_trainable_parameter_count(tmp_path):
    trainer = Trainer(tiny_config("ce", train={"steps": 2, "eval_every": 0}), tmp_path, show_progress=False)
    frozen = trainer.model.blocks[0].x0_mix.requires_grad_(False)  # counted out
    summary = trainer.run()
    trainable = sum(p.numel() for p in trainer.model.parameters() if p.requires_grad)
    assert trainable == sum(p.numel() for p in trainer.model.parameters()) - frozen.numel()
    assert summary["n_params"] == trainable
    assert json.loads((tmp_path / "summary.json").read_text())["n_params"] == trainable


def test_checkpoint_of_another_config_is_refused(tmp_path, monkeypatch):
    import replication.training.train as loop

    real = loop.accumulate_gradients

    def dies_at_step_5(*args, **kwargs):
        if kwargs["step"] == 5:
            raise KeyboardInterrupt
        return real(*args, **kwargs)

    monkeypatch.setattr(loop, "accumulate_gradients", dies_at_step_5)
    with pytest.raises(KeyboardInterrupt):
        train(tiny_config("ce", train={"checkpoint_every": 2}), tmp_path, show_progress=False)
    monkeypatch.setattr(loop, "accumulate_gradients", real)
    with pytest.raises(
        RunFolderError, match=r"belongs to a different config \(train.checkpoint_every: 2 -> 3\)"
    ):
        train(tiny_config("ce", train={"checkpoint_every": 3}), tmp_path, show_progress=False)


def test_gradient_alignment_values_are_cosines(tmp_path):
    config = tiny_config("ce", alignment={"every": 5}, train={"steps": 12})
    train(config, tmp_path, show_progress=False)
    records = [r for r in read_metrics(tmp_path / "metrics.jsonl") if r["kind"] == "alignment"]
    assert [r["step"] for r in records] == [0, 5, 10]
    for r in records:
        assert r["align/layers"] == [2, 3]  # the alternate middle layers of a 6-block model
        assert all(-1.0 <= c <= 1.0 for c in r["align/cos"])
        assert -1.0 <= r["align/noise_cos"] <= 1.0
        for layer, per_block in zip(r["align/layers"], r["align/cos_by_block"]):
            assert all(
                c is None for c in per_block[layer + 1 :]
            )  # blocks after the layer get no MBE gradient
            assert all(c is None or -1.0 <= c <= 1.0 for c in per_block)
        assert r["align/norm_ce"] > 0 and all(n > 0 for n in r["align/norm_mbe"])


def _nan_after(monkeypatch, first_bad_call: int):
    from replication.tasks.lm import LanguageTask

    real = LanguageTask.main_loss
    calls = {"n": 0}

    def main_loss(self, output, batch):
        calls["n"] += 1
        loss = real(self, output, batch)
        return loss * math.nan if calls["n"] >= first_bad_call else loss

    monkeypatch.setattr(LanguageTask, "main_loss", main_loss)
    return calls


def test_a_nonfinite_step_is_skipped_logged_and_not_fed_to_the_controller(tmp_path, monkeypatch):
    from replication.tasks.lm import LanguageTask

    real = LanguageTask.main_loss
    calls = {"n": 0}

    def nan_in_step_3(self, output, batch):
        calls["n"] += 1
        loss = real(self, output, batch)
        return loss * math.nan if calls["n"] in (7, 8) else loss  # both micro-batches of step 3

    monkeypatch.setattr(LanguageTask, "main_loss", nan_in_step_3)
    config = tiny_config("gapt", train={"steps": 8, "eval_every": 0, "eval_at_start": False})
    trainer = Trainer(config, tmp_path, show_progress=False)
    weights = {}
    real_step = trainer.optimizers.step

    def step_and_record():
        real_step()
        weights[len(weights)] = trainer.model.head.weight.detach().clone()

    trainer.optimizers.step = step_and_record
    summary = trainer.run()
    assert summary["nonfinite_steps"] == 1 and len(weights) == 7  # 8 steps, one update skipped
    assert trainer.controller.n_nonfinite == 1 and trainer.controller.n_updates == 8
    records = read_metrics(tmp_path / "metrics.jsonl")
    assert [r["step"] for r in records if r.get("event") == "nonfinite_step"] == [3]
    event = next(r for r in records if r.get("event") == "nonfinite_step")
    assert event == {"kind": "event", "event": "nonfinite_step", "step": 3, "loss": None, "in_a_row": 1}
    assert next(r for r in records if r["kind"] == "train" and r["step"] == 3)["train/ce"] is None


def test_a_step_skipped_for_a_nan_mbe_micro_batch_never_advances_the_controller(tmp_path, monkeypatch):
    # gapt's MBE micro-batches return NaN from the first compress step on: every compress step is
    # skipped, so s_c never moves and the run never leaves compress (before the fix: after p_c steps)
    import replication.training.objectives as objectives

    real = objectives.layer_mbe

    def nan_with_grad(hidden, layers=None, **kwargs):
        values = real(hidden, layers, **kwargs)
        return values * math.nan if torch.is_grad_enabled() else values  # only the regularized MBE

    monkeypatch.setattr(objectives, "layer_mbe", nan_with_grad)
    config = tiny_config(
        "gapt",
        train={"steps": 16, "eval_every": 0, "eval_at_start": False, "max_nonfinite_in_row": 100},
        gapt={"delta_ce": 100.0, "patience_memorize": 3, "patience_compress": 2},
    )
    trainer = Trainer(config, tmp_path, show_progress=False)
    summary = trainer.run()
    records = read_metrics(tmp_path / "metrics.jsonl")
    phases = [r["phase"] for r in records if r["kind"] == "train"]
    changes = [r for r in records if r.get("event") == "phase_change"]
    assert [(c["from"], c["to"]) for c in changes] == [("memorize", "compress")]
    skipped = [r["step"] for r in records if r.get("event") == "nonfinite_step"]
    assert skipped == [i for i, p in enumerate(phases) if p == "compress"] and len(skipped) >= 10
    assert summary["nonfinite_steps"] == trainer.controller.n_nonfinite == len(skipped)
    assert trainer.controller.n_updates == 16 and trainer.controller.s_c == 0


def test_nonfinite_losses_in_a_row_abort_with_a_clear_message(tmp_path, monkeypatch):
    _nan_after(monkeypatch, first_bad_call=9)  # from step 4 on
    config = tiny_config("ce", train={"steps": 20, "max_nonfinite_in_row": 3, "checkpoint_every": 2})
    with pytest.raises(NonFiniteLossError, match=r"non-finite in 3 steps in a row \(last at step 6\)"):
        train(config, tmp_path, show_progress=False)
    assert not (tmp_path / "summary.json").exists()
    assert (tmp_path / "checkpoint.pt").exists()  # the last good checkpoint stays


def test_alternate_objective_needs_two_micro_batches():
    with pytest.raises(ConfigError, match="grad_accum must be >= 2"):
        Trainer(tiny_config("gapt", train={"grad_accum": 1}), "/tmp/unused-run-dir")


def test_micro_batches_alternate_and_the_mbe_layer_rotates(monkeypatch, tmp_path):
    gapt = METHODS["gapt"]
    kinds = [micro_batch_kind(gapt, Phase.COMPRESS, m) for m in range(4)]
    assert kinds == ["main", "mbe", "main", "mbe"]
    assert [micro_batch_kind(gapt, Phase.MEMORIZE, m) for m in range(4)] == ["main"] * 4
    assert {micro_batch_kind(METHODS["gapt_joint"], Phase.COMPRESS, m) for m in range(4)} == {"joint"}
    assert {micro_batch_kind(METHODS["ce"], Phase.COMPRESS, m) for m in range(4)} == {"main"}

    from replication.tasks.lm import LanguageTask

    real = LanguageTask.forward
    uptos = []

    def recording_forward(self, model, batch, *, window=None, upto=None):
        uptos.append(upto)
        return real(self, model, batch, window=window, upto=upto)

    monkeypatch.setattr(LanguageTask, "forward", recording_forward)
    # ce_mbe-like fixed compression is joint; force gapt into compress from the first step
    config = tiny_config("gapt", train={"steps": 5, "eval_at_start": False, "eval_every": 0})
    trainer = Trainer(config, tmp_path, show_progress=False)
    trainer.controller.phase = Phase.COMPRESS
    trainer.controller.s_c = -1000  # stay in compress for this test
    uptos.clear()
    trainer.run()
    train_uptos = uptos[: 5 * 2]
    assert train_uptos == [None, 3, None, 4, None, 3, None, 4, None, 3]  # layers 2, 3, 2, 3, 2 (+1)


def test_paper_layer_sets():
    assert default_layers(12, "alternate") == list(range(2, 10))
    assert default_layers(12, "joint") == list(range(1, 11))
    with pytest.raises(ConfigError, match="set objective.alternate_layers"):
        default_layers(4, "alternate")
    plan = plan_layers(tiny_config("gapt_joint").objective, METHODS["gapt_joint"], 6)
    assert plan.joint == [1, 2, 3, 4] and plan.monitored == [1, 2, 3, 4]


def test_cli_reports_a_mistyped_key(tmp_path, capsys):
    config_path = tmp_path / "config.yaml"
    write_run_config(tiny_config("ce"), config_path)
    config_path.write_text(config_path.read_text().replace("grad_accum:", "grad_acum:"))
    assert main([str(config_path)]) == 2
    assert "unknown key 'train.grad_acum' (did you mean 'grad_accum'?)" in capsys.readouterr().err


@pytest.mark.slow
@pytest.mark.parametrize("signals", [1, 2], ids=["one SIGTERM", "SIGTERM twice, 50 ms apart"])
def test_sigterm_checkpoints_and_the_same_command_resumes(tmp_path, signals):
    """One SIGTERM, or two in quick succession as a scheduler and its launcher send them, end in a
    checkpoint from which the same command resumes the same run."""
    config = tiny_config(
        "gapt", train={"steps": 120, "checkpoint_every": 0, "eval_every": 40}, **QUICK_PLATEAU
    )
    for name in ("whole", "stopped"):
        write_run_config(config, tmp_path / name / "config.yaml")
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    command = [sys.executable, "-m", "replication.training.train", "--threads", "1", "--progress", "lines"]
    subprocess.run(
        [*command, str(tmp_path / "whole" / "config.yaml")], env=env, check=True, capture_output=True
    )

    proc = subprocess.Popen(
        [*command, str(tmp_path / "stopped" / "config.yaml")], env=env, stderr=subprocess.PIPE
    )
    metrics = tmp_path / "stopped" / "metrics.jsonl"
    deadline = time.time() + 60
    while time.time() < deadline and (
        not metrics.exists() or metrics.read_text().count('"kind": "train"') < 20
    ):
        time.sleep(0.05)
    for i in range(signals):
        time.sleep(0.05 * i)
        proc.send_signal(signal.SIGTERM)
    _, err = proc.communicate(timeout=60)
    # a second SIGTERM that comes after the checkpoint, once the run has handed the signal back, ends
    # the exiting process by the default action (-15): the checkpoint is written either way
    assert proc.returncode == 130 or (signals == 2 and proc.returncode == -signal.SIGTERM), err.decode()
    assert b"resumes the run" in err
    assert (tmp_path / "stopped" / "checkpoint.pt").exists() and not (
        tmp_path / "stopped" / "summary.json"
    ).exists()

    subprocess.run(
        [*command, str(tmp_path / "stopped" / "config.yaml")], env=env, check=True, capture_output=True
    )
    assert strip_timing(read_metrics(metrics)) == strip_timing(
        read_metrics(tmp_path / "whole" / "metrics.jsonl")
    )


def test_a_run_is_dirty_when_the_code_changed_but_not_when_only_results_did(tmp_path):
    from replication.runtime.record import git_state

    def git(*args):
        subprocess.run(["git", *args], cwd=tmp_path, check=True, capture_output=True)

    git("init", "-q")
    (tmp_path / "results").mkdir()
    (tmp_path / "results" / "table.md").write_text("old numbers\n")
    (tmp_path / "code.py").write_text("x = 1\n")
    git("add", ".")
    git("-c", "user.name=t", "-c", "user.email=t@t", "commit", "-qm", "first")
    assert git_state(tmp_path)["git_dirty"] is False
    (tmp_path / "results" / "table.md").write_text("new numbers\n")  # what the DAG writes while runs train
    (tmp_path / "untracked.txt").write_text("a new file\n")
    assert git_state(tmp_path)["git_dirty"] is False and len(git_state(tmp_path)["git_commit"]) == 40
    (tmp_path / "code.py").write_text("x = 2\n")
    assert git_state(tmp_path)["git_dirty"] is True


def test_a_background_checkpoint_holds_the_state_of_its_step_and_reports_a_failed_write(
    tmp_path, monkeypatch
):
    """The thread writes a host copy: parameters changed while it writes do not reach the file; a
    write that fails raises in the training thread at the next wait."""
    import replication.training.checkpoint as checkpoint

    trainer = Trainer(tiny_config("ce"), tmp_path, show_progress=False)
    ckpt = trainer.checkpoint
    ckpt.background = True
    trainer.writer.open(truncate_to=None)
    started, release = __import__("threading").Event(), __import__("threading").Event()
    real_save = checkpoint.save_checkpoint

    def slow_save(run_dir, state):
        started.set()
        release.wait(10)
        real_save(run_dir, state)

    monkeypatch.setattr(checkpoint, "save_checkpoint", slow_save)
    before = {k: v.clone() for k, v in trainer.model.state_dict().items()}
    ckpt.save(checkpoint.LoopState(next_step=3), wait=False)
    assert started.wait(10)
    with torch.no_grad():
        for p in trainer.model.parameters():
            p.add_(1.0)  # training goes on while the file is written
    release.set()
    ckpt.wait()
    saved = torch.load(tmp_path / "checkpoint.pt", weights_only=False)
    assert saved["next_step"] == 3
    assert all(torch.equal(saved["model"][k], before[k]) for k in before)

    def full_disk(run_dir, state):
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(checkpoint, "save_checkpoint", full_disk)
    ckpt.save(checkpoint.LoopState(next_step=6), wait=False)
    with pytest.raises(OSError, match="No space left"):
        ckpt.wait()
    ckpt.wait()  # reported once
    assert torch.load(tmp_path / "checkpoint.pt", weights_only=False)["next_step"] == 3
    trainer.writer.close()


def test_a_checkpoint_holds_the_cuda_generator_of_its_own_device_only(monkeypatch):
    """Each process sees its own GPUs, so a run resumes on another number of them: the checkpoint
    holds the current device's CUDA generator, and one that held every visible device's restores the
    first's (not device by device, which fails where fewer devices are visible now)."""
    import replication.training.checkpoint as checkpoint

    restored = []
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "get_rng_state", lambda device="cuda": torch.tensor([7]))
    monkeypatch.setattr(torch.cuda, "get_rng_state_all", lambda: [torch.tensor([7])] * 8)
    monkeypatch.setattr(torch.cuda, "set_rng_state", lambda state, device="cuda": restored.append(state))

    def only_one_device(states):
        if len(states) > 1:
            raise RuntimeError("CUDA error: invalid device ordinal")
        restored.append(states[0])

    monkeypatch.setattr(torch.cuda, "set_rng_state_all", only_one_device)
    state = checkpoint.rng_state()
    assert torch.equal(state["cuda_device"], torch.tensor([7])) and "cuda" not in state
    checkpoint.set_rng_state(state)
    old = {k: v for k, v in state.items() if k != "cuda_device"}
    checkpoint.set_rng_state({**old, "cuda": [torch.tensor([1]), torch.tensor([2])]})
    assert [int(s) for s in restored] == [7, 1]
