"""Shared building blocks: every model family composes these instead of re-writing them."""

from zoo.layers.attend import attend, attend_at
from zoo.layers.attention import Attention, KVCache
from zoo.layers.conv import ShortConv
from zoo.layers.embedding import Embedding
from zoo.layers.gates import GateHead, logit
from zoo.layers.linear import Projection
from zoo.layers.mlp import SwiGLU, swiglu_hidden_dim
from zoo.layers.norms import RMSNorm
from zoo.layers.param import constant_param, normal_param
from zoo.layers.rotary import apply_rotary

__all__ = [
    "Attention",
    "Embedding", "GateHead",
    "KVCache",
    "Projection",
    "RMSNorm",
    "ShortConv",
    "SwiGLU",
    "apply_rotary",
    "attend",
    "attend_at",
    "constant_param",
    "logit",
    "normal_param",
    "swiglu_hidden_dim",
]
