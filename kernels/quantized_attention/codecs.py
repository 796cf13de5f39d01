"""KV-cache codecs (spec msssm-polysketch-quantized-attention-pallas §3): each encodes the vectors
`x: [..., T, d]` of one layer and KV head into stored arrays and decodes them back to float32;
`stored_bits_per_element` counts every stored bit (codes, scales, zero points, norms) per element
of x. Constants shared by every token of a layer and head (a rotation, a sketch, a codebook) come
from `Codec.setup(key, d)` once and are not per-token storage.

- int8: per token, int8 codes and a float16 scale max|x| / 127 (8 + 16/d bits).
- int4_kivi: KIVI (arXiv 2402.02750): asymmetric 4-bit codes with a float16 scale and zero point,
  keys per channel over groups of `KIVI_GROUP` tokens (keys have persistent outlier channels),
  values per token (`role`); codes packed two per byte (4 + 32/d bits for values, 4 + 32/G for keys).
- turbo_mse_b, b = 1..4: TurboQuant_mse (arXiv 2504.19874, Algorithm 1): the unit vector rotated
  by a random orthogonal matrix, each coordinate quantized with the Lloyd-Max codebook of a unit
  vector's coordinate density (`lloyd_max.py`), and the float16 norm (b + 16/d bits).
- turbo_mse_b+n: the mixed-precision outlier split (`turbo_split`): n channels at b + 1 bits, the
  rest at b, two instances with their own rotations and norms.
- turbo_prod_b: TurboQuant_prod (Algorithm 2): turbo_mse with b - 1 bits, then a 1-bit QJL sketch
  sign(S r) of the residual r (S Gaussian d x d) and the residual's float16 norm, decoded as
  x_mse + sqrt(pi/2)/d ||r|| S^T sign(S r): unbiased inner products (b + 32/d bits).
"""

from __future__ import annotations

import dataclasses
import functools
import math
import re
from collections.abc import Callable

import jax
import jax.numpy as jnp

from kernels.quantized_attention import lloyd_max
from kernels.quantized_attention.packing import pack_bits, unpack_bits

KIVI_GROUP = 32  # tokens per key group (KIVI's default group size)


@dataclasses.dataclass(frozen=True)
class Codec:
    """setup(key, d) -> constants; encode(x, constants, role) -> stored arrays; `rows(stored,
    constants, role)` -> a tuple of parts `[..., T, d]` and `bases(constants, role)` -> one `[d, d]`
    matrix (or None: the identity) per part, with decode(stored) = sum_i rows_i @ bases_i. Attention
    reads the packed cache in that form: it rotates the query once per part (q @ bases_i^T), scores
    the rows, accumulates values as rows and un-rotates the sum once (spec §3.6 steps 1-4).
    `role`: "key" or "value" (only KIVI tells them apart). `group`: tokens encoded together (a
    cache encodes a group once all of it is written)."""

    name: str
    setup: Callable
    encode: Callable
    rows: Callable
    bases: Callable
    group: int = 1
    doc: str = ""

    def decode(self, stored: dict, constants: dict, role: str = "key") -> jax.Array:
        """The stored vectors back in float32, `[..., T, d]`."""
        out = None
        for rows, basis in zip(self.rows(stored, constants, role), self.bases(constants, role), strict=True):
            part = rows if basis is None else rows @ basis
            out = part if out is None else out + part
        return out


def stored_bits_per_element(stored: dict, num_elements: int) -> float:
    """Every bit the encoded arrays hold, per element of the encoded x."""
    return sum(x.size * x.dtype.itemsize * 8 for x in jax.tree.leaves(stored)) / num_elements


def _no_constants(key, d, scores=None):
    return {}


def _identity_basis(constants, role="key"):
    return (None,)


def lookup(codebook: jax.Array, index: jax.Array) -> jax.Array:
    """`codebook[index]` as a chain of selects (no gather: kernels on every backend take it)."""
    out = jnp.zeros(index.shape, jnp.float32)
    for level in range(codebook.shape[-1]):
        out = jnp.where(index == level, codebook[..., level], out)
    return out


# -- int8 -------------------------------------------------------------------------------------------

def _int8_encode(x, constants, role="key"):
    scale = (jnp.max(jnp.abs(x), axis=-1, keepdims=True) / 127.0).astype(jnp.float16)
    safe = jnp.maximum(scale.astype(jnp.float32), 1e-30)
    return {"codes": jnp.clip(jnp.round(x / safe), -127, 127).astype(jnp.int8), "scale": scale}


def _int8_rows(stored, constants, role="key"):
    return (stored["codes"].astype(jnp.float32) * stored["scale"].astype(jnp.float32),)


# -- int4 KIVI --------------------------------------------------------------------------------------

def _kivi_groups(x, role):
    """x [..., T, d] -> the axis min/max run over: keys [..., T/G, G, d] (axis -2), values x itself (-1)."""
    if role == "value":
        return x, -1
    t = x.shape[-2]
    if t % KIVI_GROUP:
        raise ValueError(f"int4_kivi keys are quantized per channel over groups of {KIVI_GROUP} tokens; got {t} "
                         "tokens (keep the partial group in full precision, as KIVI does)")
    return x.reshape(x.shape[:-2] + (t // KIVI_GROUP, KIVI_GROUP, x.shape[-1])), -2


def _kivi_encode(x, constants, role="key"):
    grouped, axis = _kivi_groups(x, role)
    low, high = jnp.min(grouped, axis=axis, keepdims=True), jnp.max(grouped, axis=axis, keepdims=True)
    scale, zero = ((high - low) / 15.0).astype(jnp.float16), low.astype(jnp.float16)
    codes = jnp.clip(jnp.round((grouped - zero.astype(jnp.float32)) / jnp.maximum(scale.astype(jnp.float32), 1e-30)),
                     0, 15).reshape(x.shape)
    return {"codes": pack_bits(codes, 4), "scale": scale, "zero": zero}


def _kivi_rows(stored, constants, role="key"):
    d = stored["codes"].shape[-1] * 2
    codes = unpack_bits(stored["codes"], 4, d).astype(jnp.float32)
    grouped, _ = _kivi_groups(codes, role)
    out = grouped * stored["scale"].astype(jnp.float32) + stored["zero"].astype(jnp.float32)
    return (out.reshape(codes.shape),)


# -- TurboQuant ---------------------------------------------------------------------------------------

def _turbo_setup(mse_bits: int, sketch: bool):
    def setup(key, d, scores=None):
        rotation_key, sketch_key = jax.random.split(key)
        constants = {"rotation": jax.random.orthogonal(rotation_key, d)}
        if mse_bits:
            constants["codebook"] = jnp.asarray(lloyd_max.codebook(d, mse_bits), jnp.float32)
        if sketch:
            constants["sketch"] = jax.random.normal(sketch_key, (d, d))
        return constants

    return setup


def _unit(x):
    norm = jnp.linalg.norm(x, axis=-1, keepdims=True)
    return x / jnp.maximum(norm, 1e-30), norm.astype(jnp.float16)


def _mse_codes(coordinates, codebook, bits):
    """A rotated unit vector's coordinates `[..., T, width]` -> their packed b-bit Lloyd-Max codes."""
    thresholds = 0.5 * (codebook[1:] + codebook[:-1])
    return pack_bits(jnp.searchsorted(thresholds, coordinates).astype(jnp.uint8), bits)


def _mse_rotated(packed, codebook, bits, width):
    """The unit vectors' centroids in the rotated domain, `[..., T, width]` (times the basis: decoded)."""
    return lookup(codebook, unpack_bits(packed, bits, width))


def turbo_mse(bits: int) -> Codec:
    def encode(x, constants, role="key"):
        u, norm = _unit(x)
        return {"codes": _mse_codes(u @ constants["rotation"].T, constants["codebook"], bits), "norm": norm}

    def rows(stored, constants, role="key"):
        d = constants["rotation"].shape[-1]
        return (_mse_rotated(stored["codes"], constants["codebook"], bits, d) * stored["norm"].astype(jnp.float32),)

    def bases(constants, role="key"):
        return (constants["rotation"],)

    return Codec(f"turbo_mse_{bits}", _turbo_setup(bits, sketch=False), encode, rows, bases,
                 doc=f"TurboQuant_mse, {bits} bits per coordinate + a float16 norm")


def turbo_prod(bits: int) -> Codec:
    mse_bits = bits - 1

    def encode(x, constants, role="key"):
        u, norm = _unit(x)
        stored = {"norm": norm}
        residual = u
        if mse_bits:
            stored["codes"] = _mse_codes(u @ constants["rotation"].T, constants["codebook"], mse_bits)
            centroids = _mse_rotated(stored["codes"], constants["codebook"], mse_bits, x.shape[-1])
            residual = u - centroids @ constants["rotation"]
        stored["signs"] = pack_bits((residual @ constants["sketch"].T >= 0).astype(jnp.uint8), 1)
        stored["residual_norm"] = jnp.linalg.norm(residual, axis=-1, keepdims=True).astype(jnp.float16)
        return stored

    def rows(stored, constants, role="key"):
        d = constants["rotation"].shape[-1]
        norm = stored["norm"].astype(jnp.float32)
        signs = 2.0 * unpack_bits(stored["signs"], 1, d).astype(jnp.float32) - 1.0
        sketched = (math.sqrt(math.pi / 2) / d * stored["residual_norm"].astype(jnp.float32) * norm) * signs
        if not mse_bits:
            return (sketched,)
        return (_mse_rotated(stored["codes"], constants["codebook"], mse_bits, d) * norm, sketched)

    def bases(constants, role="key"):
        return (constants["rotation"], constants["sketch"]) if mse_bits else (constants["sketch"],)

    return Codec(f"turbo_prod_{bits}", _turbo_setup(mse_bits, sketch=True), encode, rows, bases,
                 doc=f"TurboQuant_prod: {mse_bits}-bit MSE code + 1-bit QJL of the residual (unbiased inner products)")


def turbo_split(bits: int, outliers: int) -> Codec:
    """TurboQuant's mixed precision (spec §3.3, §3.6): the `outliers` channels with the largest
    `scores` (setup's per-channel magnitudes; None: the first channels) coded by their own
    TurboQuant_mse instance at bits + 1, the other channels by another at `bits`, each with its own
    rotation and float16 norm. Each part's basis is its rotation times its channel selection
    (`[width, d]`, orthonormal rows), so attention reads it like turbo_mse. At d = 128 and 32
    outliers: 2 bits -> 2.5 bits per element with both norms, 3 -> 3.5."""
    name = f"turbo_mse_{bits}+{outliers}"
    part_bits = {"outlier": bits + 1, "rest": bits}

    def setup(key, d, scores=None):
        if not 3 <= outliers <= d - 3:
            raise ValueError(f"{name}: the outlier split needs 3 <= outliers <= head_dim - 3 = {d - 3} (each part is a "
                             f"TurboQuant instance of >= 3 channels); got {outliers}")
        order = jnp.arange(d) if scores is None else jnp.argsort(-jnp.asarray(scores, jnp.float32), stable=True)
        channels = {"outlier": jnp.sort(order[:outliers]), "rest": jnp.sort(order[outliers:])}
        constants = {}
        for part_key, part in zip(jax.random.split(key), ("outlier", "rest"), strict=True):
            width = channels[part].shape[0]
            rotation = jax.random.orthogonal(part_key, width)
            constants[part] = {"basis": jnp.zeros((width, d)).at[:, channels[part]].set(rotation),
                               "codebook": jnp.asarray(lloyd_max.codebook(width, part_bits[part]), jnp.float32)}
        return constants

    def encode(x, constants, role="key"):
        stored = {}
        for part in ("outlier", "rest"):
            u, norm = _unit(x @ constants[part]["basis"].T)  # the part's channels, rotated
            stored[part] = {"codes": _mse_codes(u, constants[part]["codebook"], part_bits[part]), "norm": norm}
        return stored

    def rows(stored, constants, role="key"):
        return tuple(_mse_rotated(stored[p]["codes"], constants[p]["codebook"], part_bits[p],
                                  constants[p]["basis"].shape[-2]) * stored[p]["norm"].astype(jnp.float32)
                     for p in ("outlier", "rest"))

    def bases(constants, role="key"):
        return tuple(constants[p]["basis"] for p in ("outlier", "rest"))

    return Codec(name, setup, encode, rows, bases,
                 doc=f"TurboQuant_mse with {outliers} outlier channels at {bits + 1} bits, the rest at {bits}")


CODECS: dict[str, Codec] = {c.name: c for c in [
    Codec("int8", _no_constants, _int8_encode, _int8_rows, _identity_basis, doc="per-token int8 with a float16 scale"),
    Codec("int4_kivi", _no_constants, _kivi_encode, _kivi_rows, _identity_basis, group=KIVI_GROUP,
          doc="KIVI: 4-bit asymmetric, keys per channel over token groups, values per token"),
    *(turbo_mse(b) for b in (1, 2, 3, 4)), *(turbo_prod(b) for b in (1, 2, 3, 4))]}


@functools.cache
def _split_codec(bits: int, outliers: int) -> Codec:
    return turbo_split(bits, outliers)


def codec(name: str) -> Codec:
    """A codec by name: one of `CODECS`, or `turbo_mse_B+N` (the outlier split of `turbo_split`)."""
    if name in CODECS:
        return CODECS[name]
    split = re.fullmatch(r"turbo_mse_([1-4])\+(\d+)", name)
    if split:
        return _split_codec(int(split[1]), int(split[2]))
    raise ValueError(f"unknown KV-cache codec {name!r}; available: {', '.join(CODECS)}, and turbo_mse_B+N (B bits, "
                     "N outlier channels at B + 1)")
