"""Bit packing of b-bit codes (1 <= b <= 8) into uint8 along the last axis: no int4 dtype needed,
and n codes take exactly ceil(n b / 8) bytes."""

from __future__ import annotations

import jax.numpy as jnp


def pack_bits(codes, bits: int):
    """`codes: [..., n]` integers in [0, 2^bits) -> `[..., ceil(n bits / 8)]` uint8 (little-endian bits)."""
    if not 1 <= bits <= 8:
        raise ValueError(f"pack_bits packs 1 to 8 bits per code, got {bits}")
    n = codes.shape[-1]
    shifts = jnp.arange(bits, dtype=jnp.uint8)
    bit_array = (codes.astype(jnp.uint8)[..., None] >> shifts) & 1  # [..., n, bits]
    flat = bit_array.reshape(codes.shape[:-1] + (n * bits,))
    pad = -(n * bits) % 8
    flat = jnp.pad(flat, [(0, 0)] * (flat.ndim - 1) + [(0, pad)])
    by_byte = flat.reshape(flat.shape[:-1] + (-1, 8))
    return jnp.sum(by_byte << jnp.arange(8, dtype=jnp.uint8), axis=-1, dtype=jnp.uint8)


def unpack_bits(packed, bits: int, n: int):
    """The inverse of `pack_bits`: `[..., bytes]` uint8 -> `[..., n]` uint8 codes."""
    flat = ((packed[..., None] >> jnp.arange(8, dtype=jnp.uint8)) & 1).reshape(packed.shape[:-1] + (-1,))
    per_code = flat[..., :n * bits].reshape(packed.shape[:-1] + (n, bits))
    return jnp.sum(per_code << jnp.arange(bits, dtype=jnp.uint8), axis=-1, dtype=jnp.uint8)
