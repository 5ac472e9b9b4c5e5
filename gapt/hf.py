"""GAPT in the Hugging Face ``Trainer`` (the ``hf`` extra: ``pip install 'gapt-replication[hf]'``).

    from gapt.hf import GAPTTrainer

    trainer = GAPTTrainer(model=model, args=TrainingArguments(..., gradient_accumulation_steps=2),
                          train_dataset=dataset, gapt_method="gapt")
    trainer.train()

``GAPTTrainer`` and ``decoder_blocks`` are ``replication.integrations.hf``'s; its docstring says what
the trainer logs, checkpoints and refuses.
"""

from __future__ import annotations

from replication.integrations.hf import GAPTTrainer, decoder_blocks

__all__ = ["GAPTTrainer", "decoder_blocks"]
