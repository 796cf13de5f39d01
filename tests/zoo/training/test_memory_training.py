"""A Titans model through the training loop: its loss falls."""

import jax
import numpy as np

from zoo.config import load_config
from zoo.training import train

MAC = ["model.d_model=32", "model.num_layers=1", "data.seq_len=32", "data.max_documents=60", "data.batch_size=8",
       "train.log_every=4", "train.progress_bar=false", "schedule.warmup_steps=2", "checkpoint.every_steps=5",
       "checkpoint.async_save=false", "eval.batch_size=8", "eval.max_batches=2"]


def test_titans_mac_learns_through_the_training_loop(tmp_path):
    """Exact resumption is the loop's own property, whatever the model (tests/zoo/training/test_loop.py)."""
    cfg = load_config("configs/titans/mac_tiny.yaml", overrides=MAC + ["train.steps=12", "optimizer.learning_rate=1e-2"])
    full = train(cfg, tmp_path / "full", devices=jax.devices()[:1])
    losses = [full.losses[s] for s in sorted(full.losses)]
    assert np.mean(losses[-3:]) < losses[0] - 0.5
    assert np.isfinite(full.heldout["perplexity"])
