"""KV-cache codecs (spec msssm-polysketch-quantized-attention-pallas §3.3-3.4): bit packing, the
Lloyd-Max codebooks, each codec's error against its guarantee, and exact bit accounting."""

import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from kernels.quantized_attention import CODECS, codec, stored_bits_per_element
from kernels.quantized_attention import lloyd_max
from kernels.quantized_attention.packing import pack_bits, unpack_bits


@pytest.mark.parametrize("bits", range(1, 9))
def test_packing_round_trips_in_exactly_the_bits_it_needs(bits):
    codes = jax.random.randint(jax.random.key(bits), (3, 37), 0, 2 ** bits).astype(jnp.uint8)
    packed = pack_bits(codes, bits)
    assert packed.dtype == jnp.uint8 and packed.shape == (3, math.ceil(37 * bits / 8))
    np.testing.assert_array_equal(unpack_bits(packed, bits, 37), codes)


def test_lloyd_max_codebooks_match_the_gaussian_levels_and_the_papers_distortion():
    """At d = 128 the sphere's coordinate codebook is the N(0, 1) Lloyd-Max table over sqrt(d)
    within 2% (the table is the d -> infinity limit; the tails differ most at b = 4), and D_mse of a
    unit vector is 0.3609, 0.1160, 0.0340, 0.0093 for b = 1..4 (spec §3.3, the exact density)."""
    for bits, want in zip((1, 2, 3, 4), (0.3609, 0.1160, 0.0340, 0.0093), strict=True):
        np.testing.assert_allclose(lloyd_max.codebook(128, bits), lloyd_max.gaussian_levels_over_sqrt_d(128, bits),
                                   rtol=2e-2)
        assert lloyd_max.distortion(128, bits) == pytest.approx(want, rel=1e-2)


def unit_vectors(n, d, seed=0):
    x = jax.random.normal(jax.random.key(seed), (n, d))
    return x / jnp.linalg.norm(x, axis=-1, keepdims=True)


@pytest.mark.parametrize("bits, want", [(1, 0.3584), (2, 0.1145), (3, 0.0334), (4, 0.0091)])
def test_turbo_mse_distortion_of_unit_vectors(bits, want):
    """TurboQuant Thm. 1 at d = 64: E||x - x~||^2 of a unit vector equals the codebook's D_mse
    (spec: 0.3584, 0.1145, 0.0334, 0.0091), below the bound sqrt(3) pi / 2 * 4^-b; b + 16/d bits."""
    c, d = codec(f"turbo_mse_{bits}"), 64
    x = unit_vectors(4096, d)
    constants = c.setup(jax.random.key(1), d)
    stored = c.encode(x, constants)
    error = float(jnp.mean(jnp.sum((c.decode(stored, constants) - x) ** 2, -1)))
    assert error == pytest.approx(want, rel=0.05)
    assert error < math.sqrt(3) * math.pi / 2 * 4.0 ** -bits
    assert stored_bits_per_element(stored, x.size) == bits + 16 / d


@pytest.mark.parametrize("bits", [1, 2, 3])
def test_turbo_prod_inner_products_are_unbiased_and_turbo_mse_is_not(bits):
    """TurboQuant Thm. 2: over random rotations and sketches E<y, x~> = <y, x> for the prod codec;
    the 1-bit MSE codec shrinks inner products by 2/pi (spec §3.3); b + 32/d bits."""
    d, draws = 32, 4000
    x, noise = unit_vectors(2, d, seed=3)
    y = (x + noise) / jnp.linalg.norm(x + noise)  # <x, y> about 0.7
    prod, mse = codec(f"turbo_prod_{bits}"), codec("turbo_mse_1")

    def estimate(c, key):
        constants = c.setup(key, d)
        return jnp.dot(y, c.decode(c.encode(x[None], constants), constants)[0])

    keys = jax.random.split(jax.random.key(7), draws)
    est = jax.vmap(lambda k: estimate(prod, k))(keys)
    exact = float(jnp.dot(x, y))
    assert abs(float(est.mean()) - exact) < 4 * float(est.std()) / math.sqrt(draws) + 1e-3
    assert float(jnp.var(est)) < math.sqrt(3) * math.pi ** 2 / d * 4.0 ** -bits  # Thm. 2's bound, ||y|| = 1
    shrunk = float(jax.vmap(lambda k: estimate(mse, k))(keys).mean())
    assert shrunk == pytest.approx(2 / math.pi * exact, rel=0.1)
    constants = prod.setup(jax.random.key(0), d)
    assert stored_bits_per_element(prod.encode(x, constants), x.size) == bits + 32 / d


def test_int8_and_kivi_errors_and_bits():
    """int8: |x - x~| <= scale / 2 per token (8 + 16/d bits). KIVI: keys per channel over groups of
    32 tokens, values per token, error <= scale / 2 of their group (4 + 32/32 and 4 + 32/d bits);
    keys whose token count is not a multiple of the group are refused."""
    d = 64
    x = 3.0 * jax.random.normal(jax.random.key(0), (2, 64, d)).at[:, :, 5].mul(20.0)  # an outlier channel
    int8 = codec("int8")
    stored = int8.encode(x, {})
    err = jnp.abs(int8.decode(stored, {}) - x)
    assert bool(jnp.all(err <= stored["scale"].astype(jnp.float32) * 0.5 + 1e-3))
    assert stored_bits_per_element(stored, x.size) == 8 + 16 / d
    kivi = codec("int4_kivi")
    for role, bits in [("key", 4 + 32 / 32), ("value", 4 + 32 / d)]:
        stored = kivi.encode(x, {}, role)
        err = jnp.abs(kivi.decode(stored, {}, role) - x)
        scale = stored["scale"].astype(jnp.float32)
        bound = (jnp.repeat(scale, 32, axis=-3).reshape(x.shape) if role == "key" else scale) * 0.5
        assert bool(jnp.all(err <= bound + 2e-2)), role  # + the float16 rounding of the zero point
        assert stored_bits_per_element(stored, x.size) == bits
    per_channel = jnp.abs(kivi.decode(kivi.encode(x, {}, "key"), {}, "key") - x)
    assert float(per_channel[..., 0].max()) < float(per_channel[..., 5].max()) / 5  # the outlier stays in its channel
    with pytest.raises(ValueError, match="groups of 32 tokens"):
        kivi.encode(x[:, :40], {}, "key")
    with pytest.raises(ValueError, match="unknown KV-cache codec 'int3'; available: int8"):
        codec("int3")
    assert set(CODECS) >= {"int8", "int4_kivi", "turbo_mse_2", "turbo_prod_3"}


@pytest.mark.parametrize("bits, effective", [(2, 2.5), (3, 3.5)])
def test_outlier_split_spends_its_extra_bits_on_the_named_channels(bits, effective):
    """turbo_mse_b+32 at d = 128: 32 channels at b + 1 bits, 96 at b, two float16 norms: exactly the
    paper's 2.5 / 3.5 bits. On vectors whose large channels are the ones the scores name, its error
    is below turbo_mse_b's and below the same split on the wrong channels (scores None)."""
    d = 128
    scale = jnp.ones(d).at[jnp.arange(5, 128, 4)].set(6.0)  # 31 large channels, spread out
    x = jax.random.normal(jax.random.key(0), (2048, d)) * scale
    split, plain = codec(f"turbo_mse_{bits}+32"), codec(f"turbo_mse_{bits}")

    def error(c, constants):
        return float(jnp.mean(jnp.sum((c.decode(c.encode(x, constants), constants) - x) ** 2, -1)))

    named = split.setup(jax.random.key(1), d, scale)
    assert stored_bits_per_element(split.encode(x, named), x.size) == effective
    assert error(split, named) < 0.8 * error(plain, plain.setup(jax.random.key(1), d))
    assert error(split, named) < 0.8 * error(split, split.setup(jax.random.key(1), d))
    with pytest.raises(ValueError, match=r"turbo_mse_2\+126: the outlier split needs 3 <= outliers <= head_dim - 3"):
        codec("turbo_mse_2+126").setup(jax.random.key(0), d)
