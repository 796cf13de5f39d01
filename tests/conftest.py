"""Test setup: 8 fake CPU devices for sharding tests, set before JAX is imported anywhere."""

import os

os.environ.setdefault("JAX_PLATFORMS", "cpu")
flags = os.environ.get("XLA_FLAGS", "")
if "xla_force_host_platform_device_count" not in flags:
    flags += " --xla_force_host_platform_device_count=8"
# Tiny test programs spend most of their time in XLA's CPU backend optimisations; level 0 keeps
# the numerics and compiles several times faster.
if "xla_backend_optimization_level" not in flags:
    flags += " --xla_backend_optimization_level=0"
os.environ["XLA_FLAGS"] = flags.strip()
os.environ.setdefault("HF_DATASETS_OFFLINE", "1")
# One memzoo cache for the whole run (subprocesses inherit it), never the user's home.
if "MEMZOO_CACHE" not in os.environ:
    import tempfile

    os.environ["MEMZOO_CACHE"] = tempfile.mkdtemp(prefix="memzoo-test-cache-")

# A persistent XLA compilation cache for the CLI tests' subprocesses (train.py, eval.py), which
# compile the same programs again and again: with it only the first one pays. The test processes
# themselves compile each program once and do not write it (below).
if "JAX_COMPILATION_CACHE_DIR" not in os.environ:
    import tempfile

    os.environ["JAX_COMPILATION_CACHE_DIR"] = tempfile.mkdtemp(prefix="memzoo-test-xla-cache-")
    os.environ.setdefault("JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS", "0.2")

import gc  # noqa: E402

import jax  # noqa: E402  (environment must be set first)
import pytest  # noqa: E402

jax.config.update("jax_default_matmul_precision", "highest")
# Test processes compile each program once and never write the persistent cache (set before the
# first compile: the cache decision is made once per process).
jax.config.update("jax_enable_compilation_cache", False)

# tests/isolated/ runs in its own process, from tests/test_isolated.py: with jaxlib 0.10.2 its
# quantized-attention programs, compiled in a worker that had run other test files, made later XLA
# compiles in that worker crash (segfault / abort; 5 full runs of 5, never in a fresh process).
collect_ignore = [] if os.environ.get("MEMZOO_ISOLATED") == "1" else ["isolated"]


MAPS_LIMIT = 30000  # memory mappings a test process may reach before JAX's caches are dropped


def _memory_maps() -> int:
    """This process's memory mappings (0 where /proc is missing)."""
    try:
        with open("/proc/self/maps", "rb") as f:
            return sum(1 for _ in f)
    except OSError:
        return 0


@pytest.fixture(autouse=True)
def _release_compiled_code():
    """Drops JAX's caches after a test that leaves the process above MAPS_LIMIT memory mappings.
    Each executable XLA:CPU compiles keeps about 3 mappings (an eager op one per primitive and
    shape), and a process may hold at most vm.max_map_count of them (65530 by default): a worker
    that compiled for half the suite reached it, and its next compile segfaulted inside XLA
    (2026-11-28: two crashes in one full run, in backend_compile_and_load; test_engine.py alone
    reaches 42k mappings). Clearing the caches unmaps that code (300 jits: 435 -> 1399 mappings,
    cleared: 517); the next test recompiles what it needs."""
    yield
    if _memory_maps() > MAPS_LIMIT:
        jax.clear_caches()
        gc.collect()


# The longest test files first, so the two xdist workers (--dist loadfile hands out whole files in
# collection order) do not end with one of them alone on a long file: per-file CPU seconds on the
# 2-core box, 2026-11-29 (test_engine 302, the model contract 264, the kernels' backend contract
# about 180, trellis 128, isolated 119, tnt 87).
LONGEST_FIRST = ("tests/zoo/memory/test_engine.py", "tests/zoo/models/test_model_contract.py",
                 "tests/kernels/test_kernel_equivalence.py", "tests/zoo/memory/test_trellis.py",
                 "tests/test_isolated.py", "tests/zoo/memory/test_tnt.py")


def pytest_collection_modifyitems(config, items):
    rank = {path: i for i, path in enumerate(LONGEST_FIRST)}
    root = config.rootpath
    items.sort(key=lambda item: rank.get(item.path.relative_to(root).as_posix(), len(rank)))  # stable
