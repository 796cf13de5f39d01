import pytest

from zoo.config import load_config

TINY = [
    "model.vocab_size=259", "model.d_model=32", "model.num_layers=2", "model.num_heads=4",
    "data.source=builtin", "data.tokenizer=bytes", "data.max_documents=60", "data.seq_len=32",
    "data.batch_size=8", "train.log_every=5", "train.progress_bar=false", "schedule.warmup_steps=2",
    "checkpoint.every_steps=4", "checkpoint.async_save=false", "eval.batch_size=8", "eval.max_batches=2",
    "optimizer.learning_rate=3e-3",
]


@pytest.fixture
def tiny_cfg():
    """A tiny byte-level Transformer config; extra overrides as arguments."""
    return lambda *extra: load_config(None, overrides=TINY + list(extra))


@pytest.fixture
def tiny_overrides():
    return list(TINY)
