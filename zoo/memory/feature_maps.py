"""Feature maps of queries and keys as registered parts (zoo.memory.parts): applied per head before
the L2 normalisation (the mixer's `model.memory.qk_activation`)."""

from __future__ import annotations

import jax

from zoo.memory.parts import FeatureMap, register_feature_map

register_feature_map(FeatureMap("silu", jax.nn.silu, doc="SiLU (Titans §4.4, Gated DeltaNet)"))
register_feature_map(FeatureMap("identity", lambda x: x, doc="no map: the projections themselves"))
