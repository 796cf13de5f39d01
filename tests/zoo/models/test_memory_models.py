"""Memory-model variants beyond the registered defaults (exact matrix memory, the Mamba-2 decay
gate); every registered model's contract is in test_model_contract.py."""

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

import zoo
from tests.zoo.models.test_model_contract import stream
from zoo.config import ModelConfig

C = 4


def build(name, **kw):
    cfg = ModelConfig(name=name, vocab_size=53, d_model=16, num_layers=2, num_heads=2, sliding_window=6,
                      persistent_tokens=2, memory=zoo.registry.memory_config(name, chunk_size=C, expansion=2, **kw))
    return zoo.build_model(cfg, rngs=nnx.Rngs(0))


def tokens(seq, batch=2, seed=1):
    return jax.random.randint(jax.random.key(seed), (batch, seq), 0, 53, jnp.int32)


forward = nnx.jit(lambda m, t: m(t))


def test_exact_matrix_memory_model_decodes_exactly():
    model, toks = build("titans_lmm", structure="matrix", semantics="exact", max_grad_norm=0.0), tokens(11)
    np.testing.assert_allclose(stream(model, toks, list(range(5, 11))), forward(model, toks), atol=1e-5, rtol=1e-5)


def test_mamba2_decay_gate_decodes_exactly_and_starts_in_its_init_range():
    """Gated DeltaNet's own decay (retention_gate=mamba2): log a = -A softplus(z + dt_bias)."""
    from zoo.memory import layer

    model, toks = build("gated_deltanet", retention_gate="mamba2"), tokens(11)
    np.testing.assert_allclose(stream(model, toks, list(range(5, 11))), forward(model, toks), atol=1e-5, rtol=1e-5)
    mixer = model.blocks[0].mixer
    a = np.exp(np.asarray(mixer.decay_rate.value))
    assert ((a >= layer.MAMBA2_A_RANGE[0]) & (a <= layer.MAMBA2_A_RANGE[1])).all()
    dt = np.asarray(jax.nn.softplus(mixer.forget_gate.bias.value))  # z = 0: the decay at the bias
    assert ((dt >= layer.MAMBA2_DT_FLOOR) & (dt <= layer.MAMBA2_DT_RANGE[1] * 1.001)).all()
    log_ret = mixer.gates(jnp.zeros((1, 1, 16))).log_retention[0, :, 0]
    np.testing.assert_allclose(log_ret, -a * dt, rtol=1e-5)


def test_a_feature_map_landed_by_registration_changes_the_key_size():
    """A feature map with dk != dv (phi(x) = [x, x^2], twice the head size) lands by registration
    alone: the exact matrix memory (its kernel, dk != dv) and the anchored MLP memory build with
    keys of size 2 * head_dim and decode exactly after a mid-chunk prefill."""
    from zoo.memory import parts

    if "test_square_features" not in parts.FEATURE_MAPS:
        parts.register_feature_map(parts.FeatureMap("test_square_features", lambda x: jnp.concatenate([x, x * x], -1),
                                                    out_dim=lambda d: 2 * d))
    toks = tokens(11)
    for memory in (dict(structure="matrix", semantics="exact", max_grad_norm=0.0), dict(structure="mlp")):
        model = build("titans_lmm", qk_activation="test_square_features", **memory)
        mixer = model.blocks[0].mixer
        assert mixer.init_state[0].value.shape[:2] == (2, 2 * mixer.head_dim)  # [heads, key_dim, ...]
        np.testing.assert_allclose(stream(model, toks, list(range(5, 11))), forward(model, toks), atol=1e-5, rtol=1e-5)
