"""Quantized KV-cache attention (spec msssm-polysketch-quantized-attention-pallas §3): the codecs
(`codecs.py`: int8, KIVI-style int4, TurboQuant's MSE and inner-product codes), their bit packing
(`packing.py`) and the Lloyd-Max codebooks of a rotated unit vector's coordinates
(`lloyd_max.py`). The decode-attention kernel over the packed cache and the model integration
(`model.attention.kv_cache`) come next (issue 16)."""

from kernels.quantized_attention.codecs import CODECS, Codec, codec, stored_bits_per_element

__all__ = ["CODECS", "Codec", "codec", "stored_bits_per_element"]
