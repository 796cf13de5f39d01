"""TNT (Li, Behrouz, Razaviyayn, Mirrokni 2025, arXiv:2511.07343): a language model of memory blocks
whose mixer is TNT's hierarchical memory (zoo.memory.tnt) around the configured `model.memory`
(Titans' deep memory by default; any anchored memory spec: ATLAS's, Miras's). Stage 1 and Stage 2
are configs (configs/tnt/): Stage 2 initialises from a Stage-1 run (`train.init_from`), trains
only the local memories (`train.trainable: local_memories`) at smaller `model.tnt.local_chunks`.
"""

from __future__ import annotations

import functools

from flax import nnx

from zoo.config import ModelConfig
from zoo.memory.tnt import TNTMixer
from zoo.models.lm import compute_dtype
from zoo.models.memory_block import memory_language_model
from zoo.models.transformer import residual_std
from zoo.registry import register

PAPER = "Li, Behrouz, Razaviyayn, Mirrokni 2025, TNT: Improving Chunkwise Training for Test-Time Memorization " \
        "(arXiv:2511.07343)"


def tnt_mixer_from_config(cfg: ModelConfig, rngs: nnx.Rngs) -> TNTMixer:
    """The TNT mixer `cfg.tnt` and `cfg.memory` describe (heads default to the model's)."""
    heads = cfg.memory.num_heads or cfg.num_heads
    head_dim = cfg.memory.head_dim or cfg.d_model // heads
    return TNTMixer(cfg.d_model, heads, head_dim, cfg.memory, cfg.tnt, std=cfg.init_std, out_std=residual_std(cfg),
                    dtype=compute_dtype(cfg), remat=cfg.remat == "memory", rngs=rngs)


register("tnt", family="TNT", paper=PAPER, tiny_config="configs/tnt/tiny.yaml", uses_memory=True,
         hybrid=True)(functools.partial(memory_language_model, mixer=tnt_mixer_from_config))
