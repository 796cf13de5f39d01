"""Quantized KV-cache attention (spec msssm-polysketch-quantized-attention-pallas §3): the codecs
(`codecs.py`: int8, KIVI-style int4, TurboQuant's MSE and inner-product codes), their bit packing
(`packing.py`), the Lloyd-Max codebooks of a rotated unit vector's coordinates (`lloyd_max.py`),
one layer's packed cache (`cache.py`) and the attention that reads it directly
(`attention.py`: reference, xla and a Pallas flash-decoding kernel)."""

from kernels.quantized_attention.attention import IMPLEMENTATIONS, quantized_attention
from kernels.quantized_attention.cache import CacheLayout, QuantizedKV, make_layout
from kernels.quantized_attention.codecs import CODECS, Codec, codec, stored_bits_per_element

__all__ = ["CODECS", "IMPLEMENTATIONS", "CacheLayout", "Codec", "QuantizedKV", "codec", "make_layout",
           "quantized_attention", "stored_bits_per_element"]
