"""GAPT in the Hugging Face Trainer (replication.integrations.hf; the `hf` extra): a randomly initialized
tiny GPT-2 trained on the shipped FineWeb sample, as bytes."""

import gzip
import json

import pytest
import torch

transformers = pytest.importorskip("transformers", reason="the `hf` extra: pip install -e '.[hf]'")

from transformers import GPT2Config, GPT2LMHeadModel, TrainingArguments  # noqa: E402

from replication.integrations.hf import STATE_NAME, GAPTTrainer, decoder_blocks  # noqa: E402
from replication.science.gapt import GaptConfig, Phase  # noqa: E402

from .conftest import REPO  # noqa: E402

SAMPLE = REPO / "experiments" / "fineweb_pretrain" / "sample" / "fineweb_sample.jsonl.gz"
SEQ = 64
QUICK = GaptConfig(delta_ce=0.05, patience_memorize=3, patience_compress=3)


def byte_rows(n_rows: int) -> list[dict[str, torch.Tensor]]:
    """The sample's documents as UTF-8 bytes, separated by 256, cut into rows of SEQ tokens."""
    tokens: list[int] = []
    with gzip.open(SAMPLE, "rt") as handle:
        for line in handle:
            tokens += [*json.loads(line)["text"].encode(), 256]
            if len(tokens) >= n_rows * SEQ:
                break
    rows = torch.tensor(tokens[: n_rows * SEQ]).view(n_rows, SEQ)
    return [{"input_ids": row, "labels": row} for row in rows]


def make_trainer(output_dir, max_steps=40, **gapt):
    torch.manual_seed(0)
    model = GPT2LMHeadModel(
        GPT2Config(
            vocab_size=257,
            n_positions=SEQ,
            n_embd=32,
            n_layer=6,
            n_head=2,
            bos_token_id=256,
            eos_token_id=256,
            resid_pdrop=0.0,
            embd_pdrop=0.0,
            attn_pdrop=0.0,
        )
    )
    args = TrainingArguments(
        output_dir=str(output_dir),
        per_device_train_batch_size=4,
        gradient_accumulation_steps=2,
        max_steps=max_steps,
        learning_rate=3e-3,
        lr_scheduler_type="constant",
        logging_steps=1,
        save_steps=20,
        save_strategy="steps",
        report_to=[],
        use_cpu=True,
        seed=0,
        dataloader_num_workers=0,
        disable_tqdm=True,
    )
    return GAPTTrainer(model=model, args=args, train_dataset=byte_rows(400), gapt_controller=QUICK, **gapt)


def compress_log(trainer):
    return [row["gapt/compress"] for row in trainer.state.log_history if "gapt/compress" in row]


@pytest.mark.slow
def test_gapt_in_the_trainer_alternates_phases_logs_them_and_checkpoints_the_controller(tmp_path):
    trainer = make_trainer(tmp_path / "run")
    assert trainer.gapt.blocks == list(trainer.model.transformer.h)  # the decoder blocks, found
    trainer.train()
    logged = compress_log(trainer)
    assert len(logged) == 40 and {0.0, 1.0} <= set(logged)
    changes = trainer.gapt.controller.transitions
    assert len(changes) >= 2
    assert [1.0 if r.phase is Phase.COMPRESS else 0.0 for r in trainer.gapt_reports] == logged
    rows = [row for row in trainer.state.log_history if "gapt/mbe" in row]
    assert [row["gapt/ce"] for row in rows] == [
        r.main_loss for r in trainer.gapt_reports
    ]  # logging every step
    assert [row["gapt/mbe"] for row in rows] == [r.mbe for r in trainer.gapt_reports]
    assert rows[-1]["gapt/phase_changes"] == len(changes) and rows[-1]["gapt/nonfinite_steps"] == 0
    saved = json.loads((tmp_path / "run" / "checkpoint-20" / STATE_NAME).read_text())
    assert saved["step"] == 20 and saved["controller"]["n_updates"] == 20

    # resuming from step 20 continues the phase and the controller from there
    (tmp_path / "run" / "checkpoint-40").rename(tmp_path / "run" / "final")  # True picks the latest: 20
    resumed = make_trainer(tmp_path / "run")
    resumed.train(resume_from_checkpoint=True)
    assert resumed.gapt.step_index == 40 and resumed.gapt.controller.n_updates == 40
    assert compress_log(resumed)[-20:] == logged[-20:]
    assert resumed.gapt.controller.state_dict() == trainer.gapt.controller.state_dict()


def test_the_blocks_are_the_longest_module_list():
    model = GPT2LMHeadModel(
        GPT2Config(
            vocab_size=257,
            n_positions=SEQ,
            n_embd=32,
            n_layer=3,
            n_head=2,
            bos_token_id=256,
            eos_token_id=256,
        )
    )
    assert decoder_blocks(model) is model.transformer.h


def test_a_trainer_step_has_the_drop_in_loops_gradient(tmp_path):
    """The Trainer's accumulation (its loss division, its micro-batches) gives GAPT's gradient: the
    first step's gradients equal those of a plain drop-in loop over the same two micro-batches."""
    from transformers import TrainerCallback

    from replication.integrations.dropin import GAPT

    trainer = make_trainer(tmp_path / "run", max_steps=1)
    trainer.args.max_grad_norm = 0.0  # no clipping: the raw gradients
    initial = {k: v.clone() for k, v in trainer.model.state_dict().items()}
    seen_inputs, grads = [], {}
    real = trainer.compute_loss

    def compute_loss(model, inputs, **kwargs):
        seen_inputs.append({k: v.clone() for k, v in inputs.items()})
        return real(model, inputs, **kwargs)

    class Grab(TrainerCallback):
        def on_pre_optimizer_step(self, args, state, control, model=None, **kwargs):
            grads.update(
                {n: p.grad.clone() for n, p in trainer.model.named_parameters() if p.grad is not None}
            )

    trainer.compute_loss = compute_loss
    trainer.add_callback(Grab())
    trainer.gapt.controller.phase = Phase.COMPRESS  # micro-batch 1 is an MBE micro-batch
    trainer.train()

    model = GPT2LMHeadModel(trainer.model.config)
    model.load_state_dict(initial)
    gapt = GAPT(model.transformer.h, micro_batches=2, controller=QUICK)
    gapt.controller.phase = Phase.COMPRESS
    for micro, inputs in enumerate(seen_inputs):
        with gapt.micro_batch(0, micro) as mb:
            mb.main_loss = model(**inputs).loss
        mb.loss.backward()
    assert mb.kind == "mbe" and len(seen_inputs) == 2
    for name, param in model.named_parameters():
        if param.grad is not None:
            torch.testing.assert_close(grads[name], param.grad, rtol=1e-6, atol=1e-9)
    assert set(grads) == {n for n, p in model.named_parameters() if p.grad is not None}
