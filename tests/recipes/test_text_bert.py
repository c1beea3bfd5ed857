"""experiments/text_bert.yaml end to end through the real `tuneloop` command: a tiny Hugging Face
BERT built from a BertConfig, dict batches, a Trainer subclass whose compute_loss returns the
model's own loss and logits (`run.criterion: null`), and gradient accumulation."""

from __future__ import annotations

import pytest
import torch

pytest.importorskip("transformers")

from tl_recipes import REPO, check_interrupted_sweep, check_train_and_resume, check_validate  # noqa: E402
from tuneloop.metrics import accuracy  # noqa: E402
from tuneloop.recipes.text_bert import BertTrainer, load_data, tiny_bert  # noqa: E402

EXPERIMENT = REPO / "experiments" / "text_bert.yaml"
CHANCE = 0.5
SMALL = {"run.data_config.n_train": "512", "run.data_config.n_val": "256"}


def test_sequences_are_deterministic_padded_and_balanced():
    train, val = load_data(n_train=200, n_val=50, seed=1)
    again, _ = load_data(n_train=200, n_val=50, seed=1)
    assert all(torch.equal(train.columns[k], again.columns[k]) for k in train.columns)
    sample = train[0]
    assert set(sample) == {"input_ids", "attention_mask", "labels"}
    assert sample["input_ids"].shape == sample["attention_mask"].shape == (32,)
    mask = train.columns["attention_mask"]
    assert ((train.columns["input_ids"] == 0) == (mask == 0)).all()  # padding, and only padding, is masked
    assert 0.3 < train.columns["labels"].float().mean() < 0.7
    assert len(val) == 50


def test_bert_trainer_compute_loss_on_a_dict_batch():
    train, _ = load_data(n_train=8, n_val=4)
    batch = torch.utils.data.default_collate([train[i] for i in range(8)])
    model = tiny_bert()
    trainer = BertTrainer(model, torch.optim.AdamW(model.parameters()), None, None, metrics={"accuracy": accuracy})
    loss, logits, targets = trainer.compute_loss(batch)
    assert loss.dim() == 0 and logits.shape == (8, 2) and torch.equal(targets, batch["labels"])
    loss.backward()
    assert model.bert.embeddings.word_embeddings.weight.grad is not None


@pytest.mark.slow
def test_text_bert_validate_train_resume_and_sweep(tmp_path, ray_tmp, shared_ray, capsys):
    check_validate(EXPERIMENT, capsys, "input_ids: shape (16, 32) int64", "1024 train / 256 val samples")
    check_train_and_resume(EXPERIMENT, tmp_path, capsys, SMALL, epochs=4, interrupt_at=2, better_than=CHANCE + 0.15)
    check_interrupted_sweep(
        EXPERIMENT, tmp_path, ray_tmp, shared_ray, capsys,  # learning rates that learn within 3 epochs, and stably
        {**SMALL, "sweep.search_space.optimizer_config.lr.low": "2.0e-3",
         "sweep.search_space.optimizer_config.lr.high": "5.0e-3"},
        name="text_bert", trials=4, epochs=3, interrupt_after_epochs=2, better_than=CHANCE + 0.15)
