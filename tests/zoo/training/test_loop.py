"""The training loop on one device: learning, exact resume, accumulation, non-finite guard."""

import io
import json

import jax
import numpy as np
import pytest

from flax import nnx

from zoo.registry import build_model
from zoo.training import NonFiniteLossError, restore_run, train
from zoo.training.flops import flops_per_token
from zoo.training.metrics import read_scalars

ONE = lambda: jax.devices()[:1]


def test_loss_falls_and_outputs(tiny_cfg, tmp_path):
    cfg = tiny_cfg("train.steps=30", "optimizer.learning_rate=1e-2", "train.peak_flops=1e9")
    out = io.StringIO()
    result = train(cfg, tmp_path, devices=ONE(), stream=out)
    losses = [result.losses[s] for s in sorted(result.losses)]
    assert len(losses) == 30
    assert np.mean(losses[-5:]) < np.mean(losses[:3]) - 0.5
    assert result.heldout["perplexity"] < np.exp(np.mean(losses[:3]))
    records = [json.loads(line) for line in (tmp_path / "metrics.jsonl").read_text().splitlines()]
    steps = [r for r in records if "loss" in r]
    assert {"step", "loss", "tokens_per_s", "learning_rate", "step_time_s", "mfu"} <= set(steps[0])
    model = nnx.eval_shape(lambda: build_model(cfg.model, rngs=nnx.Rngs(0)))
    for r in steps:  # MFU = analytic FLOPs per token x tokens/s / (train.peak_flops x devices)
        assert r["mfu"] == pytest.approx(flops_per_token(model, 32) * r["tokens_per_s"] / 1e9, rel=1e-6)
    scalars = read_scalars(tmp_path / "tensorboard")
    assert {r["step"]: r["loss"] for r in steps} == pytest.approx(scalars["loss"], rel=1e-6)
    assert "heldout_perplexity" in scalars
    assert any("heldout_perplexity" in r for r in records)
    assert (tmp_path / "config.yaml").is_file() and (tmp_path / "tokenizer.json").is_file()
    assert "tokens_per_s" in out.getvalue() and "held-out perplexity" in out.getvalue()


def test_resume_is_exact(tiny_cfg, tmp_path):
    cfg = tiny_cfg("train.steps=10")
    full = train(cfg, tmp_path / "full", devices=ONE())
    first = train(cfg, tmp_path / "split", devices=ONE(), stop_after=6)  # not a checkpoint multiple
    assert first.interrupted and first.step == 6
    second = train(cfg, tmp_path / "split", devices=ONE())
    assert second.resumed_from == 6 and second.step == 10
    split_losses = {**first.losses, **second.losses}
    assert sorted(split_losses) == sorted(full.losses)
    for s in full.losses:
        assert abs(split_losses[s] - full.losses[s]) < 1e-6, s
    a = restore_run(tmp_path / "full", devices=ONE()).state
    b = restore_run(tmp_path / "split", devices=ONE()).state
    for x, y in zip(jax.tree.leaves(a.params), jax.tree.leaves(b.params)):
        np.testing.assert_allclose(x, y, atol=1e-6, rtol=0)
    for x, y in zip(jax.tree.leaves(a.opt_state), jax.tree.leaves(b.opt_state)):
        np.testing.assert_allclose(x, y, atol=1e-6, rtol=0)
    np.testing.assert_array_equal(a.rng, b.rng)


def test_grad_accumulation_equals_big_batch(tiny_cfg, tmp_path):
    one = train(tiny_cfg("train.steps=3", "data.source=mqar", "data.seq_len=32", "data.mqar.num_pairs=4",
                         "model.vocab_size=64"), tmp_path / "a", devices=ONE())
    acc = train(tiny_cfg("train.steps=3", "data.source=mqar", "data.seq_len=32", "data.mqar.num_pairs=4",
                         "model.vocab_size=64", "train.grad_accum=4"), tmp_path / "b", devices=ONE())
    for s in one.losses:
        assert abs(one.losses[s] - acc.losses[s]) < 1e-5


def test_non_finite_loss_stops_and_keeps_last_good_checkpoint(tiny_cfg, tmp_path):
    cfg = tiny_cfg("train.steps=12", "optimizer.learning_rate=1e30", "schedule.warmup_steps=0",
                   "optimizer.grad_clip=0", "checkpoint.every_steps=1")
    with pytest.raises(NonFiniteLossError) as err:
        train(cfg, tmp_path, devices=ONE())
    msg = str(err.value)
    assert "non-finite" in msg and "learning_rate" in msg
    run = restore_run(tmp_path, devices=ONE())
    assert all(np.isfinite(x).all() for x in jax.tree.leaves(run.state.params))
    assert f"step {run.step}" in msg


def test_fine_tuning_from_another_run_trains_only_the_matching_parameters(tiny_cfg, tmp_path):
    """train.init_from starts from another run's checkpoint (fresh optimizer, step 0) and
    train.trainable trains only the matching parameters: the others keep that run's values
    exactly and have no optimizer state (TNT's stage 2; fine-tuning)."""
    from zoo.config import ConfigError
    from zoo.training.optimizer import parameter_path

    first = train(tiny_cfg("train.steps=4"), tmp_path / "stage1", devices=ONE())
    source = restore_run(tmp_path / "stage1", devices=ONE()).state
    cfg = tiny_cfg("train.steps=3", f"train.init_from={tmp_path / 'stage1'}", "train.trainable=blocks/1/")
    out = io.StringIO()
    second = train(cfg, tmp_path / "stage2", devices=ONE(), stream=out)
    assert second.step == 3 and "initialised from" in out.getvalue() and "trainable=" in out.getvalue()
    assert abs(second.losses[1] - first.losses[4]) < 0.5  # it continues from stage 1, not from scratch
    tuned = restore_run(tmp_path / "stage2", devices=ONE()).state
    changed = set()
    for (path, a), b in zip(jax.tree_util.tree_leaves_with_path(source.params), jax.tree.leaves(tuned.params)):
        name = parameter_path(path)
        if name.startswith("blocks/1/"):
            changed.add(float(np.abs(np.asarray(a) - np.asarray(b)).max()) > 0)
        else:
            np.testing.assert_array_equal(a, b, err_msg=name)  # frozen: bit for bit
    assert changed == {True}
    moments = sum(x.size for x in jax.tree.leaves(tuned.opt_state))
    trained = sum(x.size for path, x in jax.tree_util.tree_leaves_with_path(tuned.params)
                  if parameter_path(path).startswith("blocks/1/"))
    assert moments <= 2 * trained + 8  # Adam's two moments of the trained parameters (+ counters)
    with pytest.raises(ConfigError, match="matches no parameter"):
        train(tiny_cfg("train.trainable=^nothing$"), tmp_path / "bad", devices=ONE())
    with pytest.raises(ConfigError, match="do not fit"):
        train(tiny_cfg("train.steps=1", f"train.init_from={tmp_path / 'stage1'}", "model.d_model=64"),
              tmp_path / "wrong_shape", devices=ONE())
