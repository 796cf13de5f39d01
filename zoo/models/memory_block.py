"""What every memory-model family shares at block level: the mixer built from a config, and the
pre-norm residual block whose token mixer is the memory alone (Titans LMM, Gated DeltaNet).

A block subclass defines `mix(x, cache, segment_ids) -> (x, cache)`; `Block` adds the SwiGLU
MLP sublayer and the LM wrapper's block API (`__call__`, `extend`, `init_cache`).
"""

from __future__ import annotations

from flax import nnx

from zoo.config import ModelConfig
from zoo.layers import RMSNorm
from zoo.memory.layer import MemoryMixer
from zoo.models.lm import LanguageModel, compute_dtype
from zoo.models.transformer import TransformerBlock, mlp_from_config, residual_std


def mixer_from_config(cfg: ModelConfig, rngs: nnx.Rngs) -> MemoryMixer:
    """The memory mixer `cfg.memory` describes (heads default to the model's)."""
    heads = cfg.memory.num_heads or cfg.num_heads
    head_dim = cfg.memory.head_dim or cfg.d_model // heads
    return MemoryMixer(cfg.d_model, heads, head_dim, cfg.memory, std=cfg.init_std, out_std=residual_std(cfg),
                       dtype=compute_dtype(cfg), remat=cfg.remat == "memory", rngs=rngs)


class Block(nnx.Module):
    """Pre-norm residual sublayers ending in a SwiGLU MLP; subclasses define the token mixing."""

    def norm(self, cfg: ModelConfig) -> RMSNorm:
        return RMSNorm(cfg.d_model, eps=cfg.norm_eps, dtype=compute_dtype(cfg))

    def __call__(self, x, *, segment_ids=None):
        x, _ = self.mix(x, None, segment_ids)
        return x + self.mlp(self.mlp_norm(x))

    def extend(self, x, cache):
        x, cache = self.mix(x, cache, None)
        return x + self.mlp(self.mlp_norm(x)), cache


class MemoryBlock(Block):
    """The memory is the only token mixer: x + Mem(Norm x), then x + SwiGLU(Norm x). `mixer`
    builds the memory mixer from the config (default: `mixer_from_config`; TNT's its own)."""

    def __init__(self, cfg: ModelConfig, rngs: nnx.Rngs, mixer=mixer_from_config):
        self.mem_norm, self.mixer = self.norm(cfg), mixer(cfg, rngs)
        self.mlp_norm, self.mlp = self.norm(cfg), mlp_from_config(cfg, rngs)

    def init_cache(self, batch_size, max_len):
        return self.mixer.init_state_for(batch_size)

    def mix(self, x, cache, segment_ids):
        h, cache = self.mixer(self.mem_norm(x), state=cache, segment_ids=segment_ids)
        return x + h, cache


def memory_language_model(cfg: ModelConfig, rngs: nnx.Rngs, mixer=mixer_from_config) -> LanguageModel:
    """A language model of `MemoryBlock`s. With `cfg.hybrid_attention` = n > 0, every n-th block
    (the n-th, 2n-th, ...) is a Transformer++ attention block instead: the Samba-style hybrids of
    Miras (Moneta-H / Yaad-H / Memora-H: n = 2, 1:1, window 2048; spec M10), Gated DeltaNet-H and
    ATLAS. The attention window is `cfg.sliding_window` (0 = full causal attention). `mixer`: the
    memory blocks' mixer builder."""
    n = cfg.hybrid_attention

    def block(i: int, r: nnx.Rngs):
        return TransformerBlock(cfg, r) if n and (i + 1) % n == 0 else MemoryBlock(cfg, r, mixer)

    return LanguageModel(cfg, block, rngs=rngs)
