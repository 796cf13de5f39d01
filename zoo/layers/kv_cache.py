"""How attention layers keep their KV cache for decoding (`model.kv_cache` in configs): in a float
dtype (`model`, `bfloat16`, `float32`) or quantized by a codec of `kernels.quantized_attention`
(`int8`, `int4_kivi`, `turbo_mse`, `turbo_prod`), read by `quantized_attention` directly. Training
and full-sequence calls never touch it: a checkpoint decodes with any format.

    model:
      kv_cache: {dtype: turbo_mse, bits: 4, recent: 128}
"""

from __future__ import annotations

import dataclasses

import jax
import jax.numpy as jnp
from flax import struct

from kernels.quantized_attention import attention as quantized
from kernels.quantized_attention import cache as qcache

FLOAT_DTYPES = ("model", "bfloat16", "float32")
QUANTIZED_DTYPES = ("int8", "int4_kivi", "turbo_mse", "turbo_prod")


@dataclasses.dataclass(frozen=True)
class KVCacheFormat:
    """The KV cache's storage. `bits`: TurboQuant's bits per coordinate (1-4; turbo_* only);
    turbo_prod codes keys with (bits - 1)-bit MSE codes + a 1-bit QJL sketch and values with
    turbo_mse (spec §3.6). `recent`: a query reads the keys of its last `recent` tokens in full
    precision (spec §3.6 step 6, KIVI's residual; at least the codec's group - 1: 31 for int4_kivi;
    128 by default: measured, most of the quality loss is in the newest tokens, docs/fidelity.md).
    `outliers`: turbo_mse only: this many channels per KV head (the largest by the K / V
    projection's column norms; rotary pairs together) coded at bits + 1 by their own TurboQuant
    instance (the paper's 2.5 / 3.5-bit mixed precision: 32 of 128 channels).
    `backend`: quantized_attention's. `seed`: the codecs' rotations and sketches (one draw per KV
    head)."""

    dtype: str = dataclasses.field(default="model",
                                   metadata={"choices": FLOAT_DTYPES + QUANTIZED_DTYPES})
    bits: int = 4
    recent: int = 128
    outliers: int = 0
    backend: str = dataclasses.field(default="auto", metadata={"choices": ("auto", *quantized.IMPLEMENTATIONS)})
    seed: int = 0

    def __post_init__(self):
        if self.dtype.startswith("turbo") and not 1 <= self.bits <= 4:
            raise ValueError(f"bits must be 1-4 for {self.dtype} (TurboQuant's Lloyd-Max codes), got {self.bits}")
        if self.outliers < 0 or (self.outliers and self.dtype != "turbo_mse"):
            raise ValueError(f"outliers ({self.outliers}) must be >= 0, and is a turbo_mse option (got dtype "
                             f"{self.dtype}): the channels coded at bits + 1")
        if self.recent < 0:  # messages start with the field: the config prefixes its section
            raise ValueError(f"recent must be >= 0 (newest tokens kept in full precision), got {self.recent}")

    @property
    def quantized(self) -> bool:
        return self.dtype in QUANTIZED_DTYPES

    def codecs(self) -> tuple[str, str]:
        """The (key, value) codec names of a quantized format."""
        if self.dtype in ("int8", "int4_kivi"):
            return self.dtype, self.dtype
        mse = f"turbo_mse_{self.bits}" + (f"+{self.outliers}" if self.outliers else "")
        return (f"turbo_prod_{self.bits}" if self.dtype == "turbo_prod" else mse), mse

    def float_dtype(self, model_dtype) -> jnp.dtype:
        return model_dtype if self.dtype == "model" else jnp.dtype(self.dtype)


@struct.dataclass
class QuantizedKVCache:
    """A layer's quantized cache: `store` (kernels.quantized_attention.cache.QuantizedKV), `pos: []`
    the next position, `conv_tail: [batch, K-1, d_model]` or None."""

    store: qcache.QuantizedKV
    pos: jax.Array
    conv_tail: jax.Array | None = None


def channel_scores(kernel: jax.Array, rotary: bool) -> jax.Array:
    """Expected magnitude of each output channel of a K or V projection `kernel: [d_model, heads,
    head_dim]` -> `[heads, head_dim]` (column norms; with rotary the two channels of a half-split
    pair rotate into each other, so both get the pair's norm)."""
    norms = jnp.sqrt(jnp.sum(jnp.square(kernel.astype(jnp.float32)), axis=0))
    if not rotary:
        return norms
    half = norms.shape[-1] // 2
    pair = jnp.sqrt(norms[..., :half] ** 2 + norms[..., half:] ** 2)
    return jnp.concatenate([pair, pair], axis=-1)


def layout_of(fmt: KVCacheFormat, store: qcache.QuantizedKV) -> qcache.CacheLayout:
    """A store's static layout, read back from its shapes."""
    key_codec, value_codec = fmt.codecs()
    _, recent, kv_heads, head_dim = store.recent_k.shape
    return qcache.CacheLayout(key_codec, value_codec, kv_heads, head_dim, slots=store.slot_pos.size, recent=recent)


def set_kv_cache(model, fmt: KVCacheFormat) -> None:
    """Makes every attention layer of `model` (an nnx.Module) keep its decoding cache in `fmt`, in
    place: a trained model decodes with any format (parameters are untouched; build caches with
    `init_cache` afterwards)."""
    if not isinstance(fmt, KVCacheFormat):
        raise TypeError(f"set_kv_cache takes a KVCacheFormat, e.g. KVCacheFormat(dtype='int8'); got {fmt!r}")
    found = 0
    for _, module in model.iter_modules():
        if isinstance(getattr(module, "kv_cache", None), KVCacheFormat):
            module.kv_cache = fmt
            found += 1
    if not found:
        raise ValueError(f"{type(model).__name__} has no attention layer with a KV cache to format")
