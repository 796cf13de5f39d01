"""Sharded training on 8 fake CPU devices == one device; checkpoints move across device counts."""

import jax
import numpy as np
import pytest
from jax.sharding import PartitionSpec as P

from zoo.config import MeshConfig, load_config
from zoo.data import make_data
from zoo.training import Runtime, make_mesh, restore_run, train
from zoo.training.sharding import logical_to_spec, process_batch_rows, put_process_batch


def test_logical_rules_skip_axes_that_do_not_divide():
    mesh = make_mesh(MeshConfig(data=1, fsdp=4, tensor=2), jax.devices()[:8])
    assert logical_to_spec(("embed", "heads", "kv"), (32, 4, 8), mesh) == P("fsdp", "tensor", None)
    assert logical_to_spec(("embed", "kv_heads", "kv"), (32, 1, 8), mesh) == P("fsdp", None, None)
    assert logical_to_spec(("vocab", "embed"), (259, 32), mesh) == P(None, "fsdp")
    assert logical_to_spec(("embed",), (6,), mesh) == P(None)


def test_mesh_errors_name_the_fix():
    with pytest.raises(ValueError, match="mesh.data"):
        make_mesh(MeshConfig(data=3, fsdp=1, tensor=1), jax.devices()[:8])


def _one_step(cfg, devices):
    rt = Runtime(cfg, make_mesh(cfg.mesh, devices))
    state = rt.init_state()
    rows = process_batch_rows(rt.mesh, cfg.data.batch_size, cfg.train.grad_accum)
    batch = make_data(cfg).train.next_rows(rows)
    batch = put_process_batch(batch, rows, rt.mesh, cfg.data.batch_size, cfg.train.grad_accum)
    new_state, metrics = rt.train_step(state, batch)
    return jax.device_get(new_state), jax.device_get(metrics), new_state


def test_fsdp_tensor_step_matches_single_device(tiny_cfg):
    single, m1, _ = _one_step(tiny_cfg("mesh.data=1"), jax.devices()[:1])
    sharded, m8, live = _one_step(tiny_cfg("mesh.data=1", "mesh.fsdp=4", "mesh.tensor=2"), jax.devices()[:8])
    q = live.params["blocks"][0]["attn"]["q"]["kernel"]
    assert q.sharding.spec == P("fsdp", "tensor", None) and len(q.sharding.device_set) == 8
    assert abs(float(m1["loss"]) - float(m8["loss"])) < 1e-5
    for a, b in zip(jax.tree.leaves(single.params), jax.tree.leaves(sharded.params)):
        np.testing.assert_allclose(a, b, atol=1e-5, rtol=1e-5)
    for a, b in zip(jax.tree.leaves(single.opt_state), jax.tree.leaves(sharded.opt_state)):
        np.testing.assert_allclose(a, b, atol=1e-5, rtol=1e-5)


def test_memory_model_sharded_step_matches_single_device():
    """A Titans (MAG) step with the memory states split over data x fsdp and heads over tensor."""
    base = ["model.num_layers=1", "data.seq_len=32", "data.max_documents=40", "data.batch_size=8"]
    cfg = lambda *extra: load_config("configs/titans/mag_tiny.yaml", overrides=base + list(extra))  # noqa: E731
    single, m1, _ = _one_step(cfg("mesh.data=1"), jax.devices()[:1])
    sharded, m8, live = _one_step(cfg("mesh.data=2", "mesh.fsdp=2", "mesh.tensor=2"), jax.devices()[:8])
    w0 = live.params["blocks"][0]["mixer"]["init_state"][0]
    assert w0.sharding.spec[0] == "tensor"  # the learned initial memory is split by heads
    assert abs(float(m1["loss"]) - float(m8["loss"])) < 1e-5
    for a, b in zip(jax.tree.leaves(single.params), jax.tree.leaves(sharded.params), strict=True):
        np.testing.assert_allclose(a, b, atol=1e-5, rtol=1e-5)


def test_checkpoint_from_8_devices_restores_on_4_and_1(tiny_cfg, tmp_path):
    cfg8 = tiny_cfg("train.steps=6", "mesh.data=2", "mesh.fsdp=2", "mesh.tensor=2")
    full = train(cfg8, tmp_path / "full", devices=jax.devices()[:8])
    train(cfg8, tmp_path / "moved", devices=jax.devices()[:8], stop_after=3)
    saved = restore_run(tmp_path / "moved", devices=jax.devices()[:8]).state
    for n in (4, 1):
        run = restore_run(tmp_path / "moved", devices=jax.devices()[:n])
        assert run.step == 3 and run.runtime.mesh.devices.size == n
        for a, b in zip(jax.tree.leaves(saved), jax.tree.leaves(run.state)):
            np.testing.assert_array_equal(np.asarray(a), np.asarray(b))
    # and training continues on 4 devices where the 8-device run stopped
    resumed = train(tiny_cfg("train.steps=6", "mesh.data=1", "mesh.fsdp=2", "mesh.tensor=2"),
                    tmp_path / "moved", devices=jax.devices()[:4])
    assert resumed.resumed_from == 3
    for s in (4, 5, 6):
        assert abs(resumed.losses[s] - full.losses[s]) < 1e-5
