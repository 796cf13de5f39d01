"""Config: every shipped YAML loads; each kind of bad input names the key and the fix."""

import dataclasses
from pathlib import Path

import pytest

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
