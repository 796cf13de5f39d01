"""memzoo: test-time-memorization sequence models in JAX / Flax NNX.

    import zoo
    cfg = zoo.load_config("configs/quickstart.yaml", overrides=["model.num_layers=2"])
    model = zoo.build_model(cfg.model, rngs=nnx.Rngs(0))
    logits = model(tokens)                       # [batch, seq] -> [batch, seq, vocab]
    zoo.set_kv_cache(model, zoo.KVCacheFormat(dtype="turbo_mse", bits=4))   # decode from a quantized cache
"""

from zoo import registry
from zoo.config import Config, ConfigError, load_config
from zoo.generation import generate
from zoo.layers.kv_cache import KVCacheFormat, set_kv_cache
from zoo.registry import build_model

__all__ = [
    "Config",
    "ConfigError",
    "KVCacheFormat",
    "build_model",
    "generate",
    "load_checkpoint",
    "load_config",
    "load_tokenizer",
    "registry",
    "set_kv_cache",
    "train",
]


def load_checkpoint(workdir, step=None):
    """`model, cfg = zoo.load_checkpoint(workdir, step=None)`: the newest (or given) checkpoint of
    a training run, restored onto the devices present."""
    from zoo.training.restore import load_checkpoint as _load

    return _load(workdir, step)


def load_tokenizer(workdir):
    """The tokenizer a training run saved in its workdir (`encode` / `decode`)."""
    from zoo.data.tokenizers import load_tokenizer as _load

    return _load(workdir)


def train(cfg, workdir, **kwargs):
    """Trains `cfg` in `workdir` (resuming if it holds checkpoints); see zoo.training.train."""
    from zoo.training.loop import train as _train

    return _train(cfg, workdir, **kwargs)
