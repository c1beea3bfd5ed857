"""A tiny Hugging Face BERT (built from a `BertConfig`: no download) classifying synthetic token
sequences, with dict batches and a Trainer subclass whose `compute_loss` lets the model compute
its own loss.

The task: are most of the words from the high half of the vocabulary? Each sequence is
`[CLS] words... [SEP]`, of random odd length, padded to `seq_len`; each word comes from the half
the sequence leans to with probability 0.65, so the classes use the same words and only counting
them tells the classes apart. A sample is a dict of tensors (`input_ids`, `attention_mask`, `labels`), which torch's default
collate stacks into a dict batch.

`transformers` is imported inside the functions that need it, so `tuneloop` imports without it
(it is in the `dev` extra: `pip install -e '.[dev]'`).
"""

from __future__ import annotations

import torch
from torch.utils.data import Dataset

from tuneloop.trainer import Trainer

PAD, CLS, SEP = 0, 1, 2
FIRST_WORD = 3  # ids below are special tokens


def make_sequences(n: int, generator: torch.Generator, seq_len: int = 32, vocab_size: int = 128,
                   min_words: int = 5, skew: float = 0.15) -> dict[str, torch.Tensor]:
    """`n` padded sequences: input_ids and attention_mask (n, seq_len) int64, labels (n,) int64,
    deterministic in `generator`. A sequence holds an odd number of words, each from the low half
    of the vocabulary with probability 0.5 ± `skew`; its label is 1 when most of them are from the
    high half."""
    if not 1 <= min_words <= seq_len - 3:
        raise ValueError(f"1 <= min_words <= seq_len - 3 must hold, but got min_words={min_words}, seq_len={seq_len}")
    if vocab_size < FIRST_WORD + 2:
        raise ValueError(f"vocab_size >= {FIRST_WORD + 2} must hold, but got {vocab_size}")
    middle = (FIRST_WORD + vocab_size) // 2  # words below it are the low half
    input_ids = torch.full((n, seq_len), PAD, dtype=torch.int64)
    attention_mask = torch.zeros((n, seq_len), dtype=torch.int64)
    labels = torch.zeros(n, dtype=torch.int64)
    most = seq_len - 2 if seq_len % 2 else seq_len - 3  # the longest odd number of words that fits
    lengths = (torch.randint(min_words, seq_len - 1, (n,), generator=generator) // 2 * 2 + 1).clamp(max=most)
    lean = torch.where(torch.rand(n, generator=generator) < 0.5, 0.5 - skew, 0.5 + skew)
    for i in range(n):
        length = int(lengths[i])
        high = torch.rand(length, generator=generator) < lean[i]
        words = torch.where(high, torch.randint(middle, vocab_size, (length,), generator=generator),
                            torch.randint(FIRST_WORD, middle, (length,), generator=generator))
        labels[i] = int(high.sum() * 2 > length)
        input_ids[i, 0], input_ids[i, 1:length + 1], input_ids[i, length + 1] = CLS, words, SEP
        attention_mask[i, :length + 2] = 1
    return {"input_ids": input_ids, "attention_mask": attention_mask, "labels": labels}


class TokenSequences(Dataset):
    """A map-style dataset of dicts: `dataset[i]` is `{input_ids, attention_mask, labels}` (tensors)."""

    def __init__(self, columns: dict[str, torch.Tensor]):
        lengths = {key: len(value) for key, value in columns.items()}
        if len(set(lengths.values())) != 1:
            raise ValueError(f"every column must have the same length, but got {lengths}")
        self.columns = columns

    def __len__(self) -> int:
        return len(self.columns["labels"])

    def __getitem__(self, index: int) -> dict[str, torch.Tensor]:
        return {key: value[index] for key, value in self.columns.items()}


def load_data(n_train: int = 1024, n_val: int = 256, seq_len: int = 32, vocab_size: int = 128,
              seed: int = 0) -> tuple[TokenSequences, TokenSequences]:
    """(train, val) TokenSequences. `seq_len` must not exceed the model's max_position_embeddings,
    nor `vocab_size` its vocab_size."""
    generator = torch.Generator().manual_seed(seed)
    return (TokenSequences(make_sequences(n_train, generator, seq_len, vocab_size)),
            TokenSequences(make_sequences(n_val, generator, seq_len, vocab_size)))


def tiny_bert(vocab_size: int = 128, hidden_size: int = 32, num_hidden_layers: int = 2,
              num_attention_heads: int = 2, intermediate_size: int = 64, max_position_embeddings: int = 32,
              num_labels: int = 2, dropout: float = 0.1):
    """`transformers.BertForSequenceClassification` from a `BertConfig` (random weights)."""
    try:
        from transformers import BertConfig, BertForSequenceClassification
    except ImportError as exc:
        raise ImportError(f"the text_bert example needs transformers (pip install transformers, or the dev extra: "
                          f"pip install -e '.[dev]'): {exc}") from exc

    config = BertConfig(vocab_size=vocab_size, hidden_size=hidden_size, num_hidden_layers=num_hidden_layers,
                        num_attention_heads=num_attention_heads, intermediate_size=intermediate_size,
                        max_position_embeddings=max_position_embeddings, num_labels=num_labels,
                        hidden_dropout_prob=dropout, attention_probs_dropout_prob=dropout,
                        pad_token_id=PAD)
    return BertForSequenceClassification(config)


class BertTrainer(Trainer):
    """The model computes its loss from the batch's `labels` (`run.criterion: null`); its logits
    and the labels feed `run.metrics` (`accuracy` → `val_accuracy`)."""

    def compute_loss(self, batch):
        out = self.model(**batch)
        return out.loss, out.logits, batch["labels"]
