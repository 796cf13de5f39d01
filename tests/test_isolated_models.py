"""tests/isolated/test_kv_cache.py (models decoding from quantized KV caches) in its own process:
see tests/test_isolated.py."""

from tests.test_isolated import run_isolated


def test_quantized_kv_cache_models_in_their_own_process():
    run_isolated("tests/isolated/test_kv_cache.py")
