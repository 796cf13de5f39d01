"""PolySketchFormer attention (Kacham, Mirrokni & Zhong, arXiv 2310.01655; spec
msssm-polysketch-quantized-attention-pallas §2): polynomial attention made linear by sketches.

Per head, with q, k after RoPE and a LayerNorm over the head dimension (shared by q and k, no
1/sqrt(h) temperature, §2.1):

    w_ij = <phi(q_i), phi(k_j)>^2  (j <= i),    o_i = sum_j w_ij v_j / (1 + sum_j w_ij)      (§2.1-2.2)

phi maps R^h to R^r; squaring the inner product is the self-tensoring phi (x) phi in R^(r^2), so
every weight is >= 0 and ~ <q, k>^4:
- "random": phi(x) = c (x G1) * (x G2), G1, G2 ~ N(0, 1)^(h x r) drawn once per layer and fixed
  (the degree-2 Gaussian sketch, §2.2); c = 1/sqrt(r) (unbiased: E <phi(q), phi(k)> = <q, k>^2) or
  1/r (the released code's scaling), `sketch_scale`.
- "learned": phi(x) = sqrt(r) tanh(x1 * x2 / sqrt(r)), x_a = f_a2(f_a1(x)), f(x) =
  Dense_r(GELU(Dense_8r(LN(x)))) without biases (the released `sketch_layer.py`, §2.2).
- "exact": no sketch, w_ij = <LN(q_i), LN(k_j)>^degree for every pair: the quadratic polynomial
  attention (§2.1), the reference and baseline; its decoding cache holds every past token.
With `local_exact`, pairs inside one block of `block` tokens use the exact weight
<LN_q(q_i), LN_k(k_j)>^degree instead (separate LayerNorms, §2.3 "mixed"); one normaliser.

Training and prefill run the block algorithm (§2.3) of `kernels.polysketch_attention` (xla, or its
Pallas kernels on GPU/TPU): blocks of `block` tokens carrying the state S = sum phi(k) (x) phi(k) v^T
`[r^2, d]` and z = sum phi(k) (x) phi(k) `[r^2]`; each block adds its exact lower-triangular part.
Packed documents reset the state (a token reads the carried state only if its document started
before its block). Decoding (§2.4) keeps (S, z) plus the current
block's tokens (their local keys, values and features), folded into (S, z) when the block ends.
"""

from __future__ import annotations

import dataclasses
import math

import jax
import jax.numpy as jnp
from flax import nnx, struct

import kernels
from kernels.polysketch_attention.chunked import block_weights, tensor_square
from zoo.layers.attention import positions_in_documents
from zoo.layers.linear import Projection
from zoo.layers.param import constant_param, normal_param
from zoo.layers.rotary import apply_rotary

FEATURES = ("learned", "random", "exact")
SKETCH_SCALES = ("unbiased", "code")
LN_EPS = 1e-5


@dataclasses.dataclass(frozen=True)
class PolySketchFormat:
    """The `model.polysketch` section. `feature`: learned | random sketch, or exact (quadratic
    polynomial attention); `sketch_size` r (r^2 features); `block`: tokens per block of the causal
    algorithm, and the window of exact local attention when `local_exact`; `degree`: the exact
    kernel's even power p; `sketch_scale`: the random sketch's 1/sqrt(r) (unbiased) or 1/r (the
    released code); `backend`: the block algorithm's, `kernels.polysketch_attention`'s ("auto":
    Pallas on GPU and TPU, xla on CPU)."""

    feature: str = dataclasses.field(default="learned", metadata={"choices": FEATURES})
    sketch_size: int = 32
    block: int = 256
    local_exact: bool = True
    degree: int = 4
    sketch_scale: str = dataclasses.field(default="unbiased", metadata={"choices": SKETCH_SCALES})
    backend: str = dataclasses.field(default="auto", metadata={"choices": (
        "auto", *kernels.IMPLEMENTATIONS["polysketch_attention"])})

    def __post_init__(self):
        if self.degree < 2 or self.degree % 2:
            raise ValueError(f"degree must be even and >= 2 (odd powers give negative weights), got {self.degree}")
        if self.sketch_size < 1 or self.block < 1:
            raise ValueError(f"sketch_size and block must be >= 1, got {self.sketch_size} and {self.block}")


class SketchMatrix(nnx.Variable):
    """A fixed random sketch (drawn at init, saved with checkpoints, never trained)."""


class LayerNorm(nnx.Module):
    """LayerNorm over the last dim `[..., dim]` with a learned scale and bias (eps 1e-5), fp32 statistics."""

    def __init__(self, dim: int):
        self.scale = constant_param(jnp.ones((dim,)), ("kv",))
        self.bias = constant_param(jnp.zeros((dim,)), ("kv",))

    def __call__(self, x: jax.Array) -> jax.Array:
        x = x.astype(jnp.float32)
        mean = jnp.mean(x, axis=-1, keepdims=True)
        var = jnp.mean(jnp.square(x - mean), axis=-1, keepdims=True)
        return (x - mean) * jax.lax.rsqrt(var + LN_EPS) * self.scale.value + self.bias.value


class SketchMLP(nnx.Module):
    """f(x) = Dense_out(GELU(Dense_8out(LN(x)))), no biases: `[..., d_in] -> [..., d_out]`."""

    def __init__(self, d_in: int, d_out: int, rngs: nnx.Rngs):
        self.norm = LayerNorm(d_in)
        self.up = normal_param(rngs, (d_in, 8 * d_out), ("kv", None), d_in ** -0.5)
        self.down = normal_param(rngs, (8 * d_out, d_out), (None, "kv"), (8 * d_out) ** -0.5)

    def __call__(self, x: jax.Array) -> jax.Array:
        return jax.nn.gelu(self.norm(x) @ self.up.value) @ self.down.value


class LearnedSketch(nnx.Module):
    """phi(x) = sqrt(r) tanh(x1 * x2 / sqrt(r)), x_a = f_a2(f_a1(x)) (§2.2): `[..., h] -> [..., r]`."""

    def __init__(self, head_dim: int, r: int, rngs: nnx.Rngs):
        self.r = r
        self.f11, self.f12 = SketchMLP(head_dim, r, rngs), SketchMLP(r, r, rngs)
        self.f21, self.f22 = SketchMLP(head_dim, r, rngs), SketchMLP(r, r, rngs)

    def __call__(self, x: jax.Array) -> jax.Array:
        x1, x2 = self.f12(self.f11(x)), self.f22(self.f21(x))
        return math.sqrt(self.r) * jnp.tanh(x1 * x2 / math.sqrt(self.r))


class RandomSketch(nnx.Module):
    """phi(x) = c (x G1) * (x G2), the degree-2 Gaussian sketch (§2.2): `[..., h] -> [..., r]`."""

    def __init__(self, head_dim: int, r: int, scale: str, rngs: nnx.Rngs):
        self.c = r ** -0.5 if scale == "unbiased" else 1.0 / r
        key = rngs.params()
        self.g1 = SketchMatrix(jax.random.normal(jax.random.fold_in(key, 1), (head_dim, r)))
        self.g2 = SketchMatrix(jax.random.normal(jax.random.fold_in(key, 2), (head_dim, r)))

    def __call__(self, x: jax.Array) -> jax.Array:
        return self.c * (x @ self.g1.value) * (x @ self.g2.value)


def _on_grid(a: jax.Array, offset, size: int) -> jax.Array:
    """`a: [b, t, ...]` placed at slot `offset` (traced or static) of zeros `[b, size, ...]`."""
    grid = jnp.zeros((a.shape[0], size) + a.shape[2:], a.dtype)
    return jax.lax.dynamic_update_slice_in_dim(grid, a, offset, axis=1)


@struct.dataclass
class PolySketchCache:
    """Decoding state per layer: `state [b, h, r^2, d]`, `norm [b, h, r^2]` over completed blocks
    (every past token without local_exact); the current block's tokens: `local_k [b, block, h, dh]`,
    `local_v [b, block, h, d]`, `local_phi [b, block, h, r]`; `pos: []` the next position."""

    state: jax.Array
    norm: jax.Array
    local_k: jax.Array
    local_v: jax.Array
    local_phi: jax.Array
    pos: jax.Array


class PolySketchAttention(nnx.Module):
    """`x: [batch, seq, d_model] -> [batch, seq, d_model]`, causal polynomial-sketch attention with
    `num_heads` heads of `head_dim` (see the module docstring)."""

    def __init__(self, d_model: int, num_heads: int, head_dim: int, *, spec: PolySketchFormat, rope_theta: float,
                 std: float, out_std: float, dtype: jnp.dtype, rngs: nnx.Rngs):
        self.spec, self.num_heads, self.head_dim = spec, num_heads, head_dim
        self.rope_theta, self.dtype = rope_theta, dtype
        proj = dict(std=std, dtype=dtype, rngs=rngs)
        self.q = Projection((d_model,), (num_heads, head_dim), axes=("embed", "heads", "kv"), **proj)
        self.k = Projection((d_model,), (num_heads, head_dim), axes=("embed", "heads", "kv"), **proj)
        self.v = Projection((d_model,), (num_heads, head_dim), axes=("embed", "heads", "kv"), **proj)
        self.o = Projection((num_heads, head_dim), (d_model,), axes=("heads", "kv", "embed"), std=out_std, dtype=dtype,
                            rngs=rngs)
        self.qk_norm = LayerNorm(head_dim)
        self.exact = spec.feature == "exact"
        if spec.feature == "learned":
            self.sketch = LearnedSketch(head_dim, spec.sketch_size, rngs)
        elif spec.feature == "random":
            self.sketch = RandomSketch(head_dim, spec.sketch_size, spec.sketch_scale, rngs)
        if spec.local_exact and not self.exact:
            self.local_q_norm, self.local_k_norm = LayerNorm(head_dim), LayerNorm(head_dim)

    # -- pieces --------------------------------------------------------------------------------------

    def _features(self, x: jax.Array, positions: jax.Array):
        """-> (phi(q), phi(k) `[b, t, h, r]`, local q, k `[b, t, h, dh]` (None without local_exact), v)."""
        q = apply_rotary(self.q(x), positions, self.rope_theta)
        k = apply_rotary(self.k(x), positions, self.rope_theta)
        if self.exact:  # every pair exact: the shared LayerNorm, no sketch
            return None, None, self.qk_norm(q), self.qk_norm(k), self.v(x).astype(jnp.float32)
        phi_q, phi_k = self.sketch(self.qk_norm(q)), self.sketch(self.qk_norm(k))
        if not self.spec.local_exact:
            return phi_q, phi_k, None, None, self.v(x).astype(jnp.float32)
        return phi_q, phi_k, self.local_q_norm(q), self.local_k_norm(k), self.v(x).astype(jnp.float32)

    def _attend(self, phi_q, phi_k, v, lq, lk, **kwargs):
        """The block algorithm (`kernels.polysketch_attention`) on this layer's features; the exact
        baseline as one block of every token with zero sketches (every pair exact, dense)."""
        if self.exact:
            phi_q = phi_k = jnp.zeros(v.shape[:-1] + (1,), jnp.float32)
            kwargs.update(block_size=v.shape[1], backend="xla")
        else:
            kwargs.setdefault("block_size", self.spec.block)
            kwargs.setdefault("backend", self.spec.backend)
        return kernels.polysketch_attention(phi_q, phi_k, v, local_q=lq, local_k=lk, degree=self.spec.degree, **kwargs)

    # -- training form -------------------------------------------------------------------------------

    def __call__(self, x: jax.Array, *, segment_ids: jax.Array | None = None) -> jax.Array:
        """Full-sequence causal attention by the block algorithm; documents never see each other."""
        phi_q, phi_k, lq, lk, v = self._features(x, positions_in_documents(segment_ids, x.shape[1]))
        out, _ = self._attend(phi_q, phi_k, v, lq, lk, segment_ids=segment_ids)
        return self.o(out.astype(self.dtype))

    # -- decoding ------------------------------------------------------------------------------------

    def init_cache(self, batch_size: int, max_len: int) -> PolySketchCache:
        h, d = self.num_heads, self.head_dim
        r = 1 if self.exact else self.spec.sketch_size
        local = max_len if self.exact else self.spec.block if self.spec.local_exact else 1  # sketches: constant size
        return PolySketchCache(
            jnp.zeros((batch_size, h, r * r, d), jnp.float32), jnp.zeros((batch_size, h, r * r), jnp.float32),
            jnp.zeros((batch_size, local, h, d), jnp.float32), jnp.zeros((batch_size, local, h, d), jnp.float32),
            jnp.zeros((batch_size, local, h, r), jnp.float32), jnp.zeros((), jnp.int32))

    def extend(self, x: jax.Array, cache: PolySketchCache) -> tuple[jax.Array, PolySketchCache]:
        """Continues from `cache` (`x: [batch, seq, d_model]`); returns (y, cache). One token (decoding)
        and the exact baseline step token by token; a longer sketched call (prefill) runs the block
        algorithm over the blocks it touches, the current block's earlier tokens taken from the cache."""
        seq = x.shape[1]
        features = self._features(x, cache.pos + jnp.arange(seq, dtype=jnp.int32))
        if seq == 1 or self.exact:
            return self._extend_tokens(features, cache)
        return self._extend_blocks(features, cache)

    def _extend_blocks(self, features, cache: PolySketchCache) -> tuple[jax.Array, PolySketchCache]:
        """The call's tokens placed on the block grid at `pos % block`, run through the block
        algorithm from (S, z). Slots before them hold the current block's earlier tokens (with
        local_exact: their local keys, values and features, not yet folded) or nothing (without it
        the state already holds them); the open block's sketched keys stay out of the state (it
        folds when complete) and its tokens become the cache's local ones."""
        phi_q, phi_k, lq, lk, v = features
        b, seq = v.shape[:2]
        blk, local = self.spec.block, self.spec.local_exact
        off = cache.pos % blk
        g = -(-(blk - 1 + seq) // blk) * blk
        grid = dict(phi_q=_on_grid(phi_q, off, g), phi_k=_on_grid(phi_k, off, g), v=_on_grid(v, off, g),
                    lq=None, lk=None)
        slot = jnp.arange(g)[None, :, None, None]
        folded = grid["phi_k"]
        if local:
            pad = lambda a: jnp.pad(a, [(0, 0), (0, g - blk), (0, 0), (0, 0)])  # noqa: E731
            grid.update(lq=_on_grid(lq, off, g), lk=_on_grid(lk, off, g))
            for name, kept in (("lk", cache.local_k), ("v", cache.local_v), ("phi_k", cache.local_phi)):
                grid[name] = jnp.where(slot < off, pad(kept), grid[name])
            here = (off + seq) // blk * blk  # the open block (the next token's); g when the call ends on the grid
            folded = jnp.where(slot < here, grid["phi_k"], 0.0)
        out, (state, norm) = self._attend(grid["phi_q"], folded, grid["v"], grid["lq"], grid["lk"],
                                          initial_state=(cache.state, cache.norm), output_final_state=True)
        y = jax.lax.dynamic_slice_in_dim(out, off, seq, axis=1)
        local_k, local_v, local_phi = cache.local_k, cache.local_v, cache.local_phi
        if local:  # the open block's earlier slots (clamped to the last block when the call ends on the grid)
            local_k, local_v, local_phi = (jax.lax.dynamic_slice_in_dim(grid[name], here, blk, axis=1)
                                           for name in ("lk", "v", "phi_k"))
        return self.o(y.astype(self.dtype)), PolySketchCache(state, norm, local_k, local_v, local_phi, cache.pos + seq)

    def _extend_tokens(self, features, cache: PolySketchCache) -> tuple[jax.Array, PolySketchCache]:
        """Token by token (§2.4): the current block's exact part plus the state's read."""
        phi_q, phi_k, lq, lk, v = features
        if lq is None:
            lq = lk = jnp.zeros(v.shape, jnp.float32)  # unused without local_exact
        if phi_q is None:  # exact: no sketch state (its r = 1 features stay zero)
            phi_q = phi_k = jnp.zeros(v.shape[:-1] + (1,), jnp.float32)
        blk = cache.local_k.shape[1] if self.exact else self.spec.block
        local = self.spec.local_exact or self.exact

        def step(c: PolySketchCache, xs):
            pq, pk, q_loc, k_loc, vt = xs  # [b, h, *]
            if local:  # the current block's earlier tokens and this one
                slot = c.pos % blk
                local_k, local_v, local_phi = (c.local_k.at[:, slot].set(k_loc), c.local_v.at[:, slot].set(vt),
                                               c.local_phi.at[:, slot].set(pk))
                w = block_weights(None, None, q_loc[:, :, None], jnp.swapaxes(local_k, 1, 2),
                                  self.spec.degree)[:, :, 0]  # [b, h, blk]
                w = jnp.where((jnp.arange(blk) <= slot)[None, None], w, 0.0)
                num = jnp.einsum("bhs,bshd->bhd", w, local_v)
                den = jnp.sum(w, axis=-1)
                state, norm = c.state, c.norm
            else:  # every token folds in at once
                big_k = tensor_square(pk)
                state = c.state + big_k[..., None] * vt[:, :, None, :]
                norm = c.norm + big_k
                local_k, local_v, local_phi = c.local_k, c.local_v, c.local_phi
                num, den = 0.0, 0.0
            big_q = tensor_square(pq)
            num = num + jnp.einsum("bhf,bhfd->bhd", big_q, state)
            den = den + jnp.einsum("bhf,bhf->bh", big_q, norm)
            y = num / (1.0 + den)[..., None]
            if local:  # the block is complete: fold its tokens into the state
                done = (c.pos + 1) % blk == 0
                big = tensor_square(local_phi)  # [b, blk, h, r^2]
                state = jnp.where(done, state + jnp.einsum("bshf,bshd->bhfd", big, local_v), state)
                norm = jnp.where(done, norm + jnp.sum(big, axis=1), norm)
            return PolySketchCache(state, norm, local_k, local_v, local_phi, c.pos + 1), y

        xs = tuple(jnp.moveaxis(a, 1, 0) for a in (phi_q, phi_k, lq, lk, v))
        cache, ys = jax.lax.scan(step, cache, xs)
        return self.o(jnp.moveaxis(ys, 0, 1).astype(self.dtype)), cache
