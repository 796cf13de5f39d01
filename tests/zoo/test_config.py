"""Config: every shipped YAML loads; each kind of bad input names the key and the fix."""

import dataclasses
from pathlib import Path

import pytest

import zoo
from zoo.config import Config, ConfigError, load_config, save_config

ROOT = Path(__file__).resolve().parents[2]
CONFIGS = sorted((ROOT / "configs").rglob("*.yaml"))


def test_configs_exist():
    assert ROOT.joinpath("configs/quickstart.yaml") in CONFIGS


@pytest.mark.parametrize("path", CONFIGS, ids=lambda p: str(p.relative_to(ROOT)))
def test_every_config_loads(path):
    cfg = load_config(path)
    assert isinstance(cfg, Config)


def test_overrides_coerce_types():
    cfg = load_config(ROOT / "configs/quickstart.yaml", overrides=[
        "train.steps=7", "optimizer.learning_rate=1e-4", "model.tie_embeddings=false",
        "data.paths=a.txt,b.txt", "data.mqar.num_pairs=3", "model.dtype=bfloat16"])
    assert cfg.train.steps == 7 and isinstance(cfg.train.steps, int)
    assert cfg.optimizer.learning_rate == pytest.approx(1e-4)
    assert cfg.model.tie_embeddings is False
    assert cfg.data.paths == ("a.txt", "b.txt")
    assert cfg.data.mqar.num_pairs == 3
    assert cfg.model.dtype == "bfloat16"


def test_frozen():
    cfg = Config()
    with pytest.raises(dataclasses.FrozenInstanceError):
        cfg.train.steps = 3


def test_save_and_reload_roundtrip(tmp_path):
    cfg = load_config(ROOT / "configs/quickstart.yaml", overrides=["data.paths=[x.txt]"])
    save_config(cfg, tmp_path / "c.yaml")
    assert load_config(tmp_path / "c.yaml") == cfg


@pytest.mark.parametrize("override, expected", [
    ("train.stepz=3", ["train.stepz", "train.steps"]),
    ("modle.d_model=3", ["modle", "model"]),
    ("model.num_layers=two", ["model.num_layers", "integer", "two"]),
    ("model.tie_embeddings=maybe", ["model.tie_embeddings", "true or false"]),
    ("optimizer.learning_rate=fast", ["optimizer.learning_rate", "number"]),
    ("schedule.kind=cosin", ["schedule.kind", "cosine", "linear", "Did you mean 'cosine'"]),
    ("model.dtype=fp16", ["model.dtype", "float32", "bfloat16"]),
    ("model.name=transfomer", ["transfomer", "Did you mean 'transformer'"]),
    ("model.num_heads=3", ["model.d_model=64", "model.num_heads=3", "divisible"]),
    ("model.num_kv_heads=3", ["num_kv_heads", "multiple"]),
    ("train.grad_accum=3", ["data.batch_size", "train.grad_accum", "divisible"]),
    ("train.steps=0", ["train.steps", "> 0"]),
    ("data.source=files", ["data.paths"]),
    ("data.source=hf", ["data.hf_name"]),
    ("data.heldout_fraction=1.5", ["heldout_fraction"]),
    ("mesh.fsdp=-1", ["at most one may be -1"]),
    ("train.steps", ["no '='", "section.field=value"]),
])
def test_bad_input_messages(override, expected):
    with pytest.raises(ConfigError) as err:
        load_config(None, overrides=[override])
    for text in expected:
        assert text in str(err.value), (text, str(err.value))


def test_attention_kernel_without_window_support_is_refused_at_load():
    with pytest.raises(ConfigError, match="pallas_triton has no sliding window .*sliding_window=8"):
        load_config(None, overrides=["model.attention=pallas_triton", "model.sliding_window=8"])
    assert load_config(None, overrides=["model.attention=pallas_triton"]).model.attention == "pallas_triton"


def test_tokamax_attention_without_the_package_is_refused_at_load(monkeypatch):
    from zoo.layers import tokamax_attention

    monkeypatch.setattr(tokamax_attention, "available", lambda: False)
    with pytest.raises(ConfigError, match=r"needs the tokamax package: pip install 'memzoo\[tokamax\]'"):
        load_config(None, overrides=["model.attention=tokamax"])


def test_missing_file_and_bad_yaml(tmp_path):
    with pytest.raises(ConfigError, match="does not exist"):
        load_config(tmp_path / "nope.yaml")
    bad = tmp_path / "bad.yaml"
    bad.write_text("model: [unclosed\n")
    with pytest.raises(ConfigError, match="not valid YAML"):
        load_config(bad)
    scalar = tmp_path / "scalar.yaml"
    scalar.write_text("42\n")
    with pytest.raises(ConfigError, match="mapping"):
        load_config(scalar)


def test_error_names_file(tmp_path):
    f = tmp_path / "c.yaml"
    f.write_text("train:\n  stesp: 3\n")
    with pytest.raises(ConfigError) as err:
        load_config(f)
    assert "c.yaml" in str(err.value) and "train.steps" in str(err.value)


def test_registered_memory_defaults_sit_under_the_files_own_values():
    cfg = load_config(ROOT / "configs/synthetic/mqar_tiny.yaml", overrides=["model.name=gated_deltanet"])
    mem = cfg.model.memory
    assert (mem.structure, mem.semantics, mem.learner, mem.gradient_at, mem.retention_gate) == (
        "matrix", "exact", "gd", "retained", "sigmoid")
    cfg = load_config(ROOT / "configs/synthetic/mqar_tiny.yaml",
                      overrides=["model.name=gated_deltanet", "model.memory.chunk_size=8"])
    assert cfg.model.memory.chunk_size == 8 and cfg.model.memory.gradient_at == "retained"
    mac = load_config(ROOT / "configs/synthetic/mqar_tiny.yaml", overrides=["model.name=titans_mac",
                                                                             "model.attn_conv_width=0"])
    assert mac.model.memory.last_layer_std == 0.02
    titans = load_config(ROOT / "configs/synthetic/mqar_tiny.yaml", overrides=["model.name=titans_lmm"])
    assert titans.model.memory == zoo.registry.memory_config("titans_lmm")


@pytest.mark.parametrize("override, expected", [
    ("model.memory.lr_init=0.2", ["model.memory.lr_init=0.2", "lr_max=0.1"]),
    ("model.memory.momentum_init=1.0", ["model.memory.momentum_init", "between 0 and 1"]),
    ("model.memory.muon_lr_init=0.5", ["model.memory.muon_lr_init=0.5", "muon_lr_max=0.1"]),
    ("model.mac_write=tokens", ["model.mac_write", "input", "attention"]),
    ("model.memory.huber_delta_init=0", ["model.memory.huber_delta_init must be > 0"]),
    ("model.memory.retention=lq", ["retention=lq with lq_q=4.0", "set model.memory.last_layer_std > 0"]),
    ("model.memory.gradient_at=retained", ["gradient_at='retained'", "semantics='exact'"]),
    ("model.memory.last_layer_std=-1", ["model.memory.last_layer_std", ">= 0"]),
    ("model.memory.retention_gate=mamba", ["model.memory.retention_gate", "Did you mean 'mamba2'"]),
    ("model.memory.max_grad_norm=-1", ["model.memory", "max_grad_norm must be >= 0"]),
])
def test_bad_memory_values(override, expected):
    with pytest.raises(ConfigError) as err:
        load_config(ROOT / "configs/synthetic/mqar_tiny.yaml", overrides=["model.name=titans_lmm", override])
    for text in expected:
        assert text in str(err.value), (text, str(err.value))


def test_clipping_the_exact_delta_rule_is_refused():
    with pytest.raises(ConfigError, match="max_grad_norm=1.0: the exact delta rule's kernels do not clip"):
        load_config(ROOT / "configs/synthetic/mqar_tiny.yaml",
                    overrides=["model.name=gated_deltanet", "model.memory.max_grad_norm=1.0"])


def test_gated_deltanet_built_from_python_needs_its_memory():
    from flax import nnx

    from zoo.config import ModelConfig

    with pytest.raises(ValueError, match="memory_config\\('gated_deltanet'"):
        zoo.build_model(ModelConfig(name="gated_deltanet"), rngs=nnx.Rngs(0))
    model = zoo.build_model(ModelConfig(name="gated_deltanet", memory=zoo.registry.memory_config("gated_deltanet")),
                            rngs=nnx.Rngs(0))
    assert model.blocks[0].mixer.spec.gradient_at == "retained"
