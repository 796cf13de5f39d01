"""Experiment configuration: frozen dataclasses (the schema), YAML files (the values), overrides.

    cfg = load_config("configs/quickstart.yaml", overrides=["train.steps=100"])

Every section is a frozen dataclass; a YAML file gives values for some of their fields and the
dataclass defaults fill the rest. Unknown keys, wrong types, values outside a field's allowed
set and inconsistent combinations raise `ConfigError` before anything is built or compiled; the
message names the key, what is allowed and, for a misspelt key, the closest valid one.
"""

from __future__ import annotations

import dataclasses
import difflib
import json
import re
import types
import typing
from pathlib import Path
from typing import Any

import yaml

from zoo.layers import tokamax_attention
from zoo.layers.attend import IMPLEMENTATIONS as ATTENTION_IMPLEMENTATIONS
from zoo.layers.kv_cache import KVCacheFormat
from zoo.layers.msssm import MSSSMFormat
from zoo.layers.polysketch import PolySketchFormat
from zoo.memory import parts as memory_parts  # the registered structures, objectives, learners, retentions
from zoo.memory import spec as memory_spec  # the spec's tables of allowed values
from zoo.memory.self_modifying import HopeFormat
from zoo.memory.tnt import TNTFormat


class ConfigError(ValueError):
    """A config file or override is invalid; the message says which key and how to fix it."""


def _choices(*values: str) -> dict:
    return {"choices": values}


def _registered(registry: dict) -> dict:
    """Choices that are a live registry's names (parts registered after this module loads count)."""
    return {"choices": registry}


@dataclasses.dataclass(frozen=True)
class MemoryConfig:
    """The associative memory of memory models (fields of zoo.memory.MemorySpec, plus the
    mixer's own: heads, conv width, the inner learning rate's maximum)."""

    structure: str = dataclasses.field(default="mlp", metadata=_registered(memory_parts.STRUCTURES))
    depth: int = 2
    expansion: int = 4
    lp_p: float = 3.0  # objective=lp: the exponent p of the l_p bias (Moneta: 3)
    lq_q: float = 4.0  # retention=lq: the exponent q of Moneta's normaliser ||A||_q^(q-2)
    elastic_threshold: float = 0.01  # retention=elastic_net: the soft threshold gamma of W = S_gamma(A)
    residual: bool = False  # M(z) = z + MLP(z) (ATLAS); off: stored values reach the read at init
    output_norm: bool = False  # M(z) = [z +] LN(MLP(z)), a parameter-free LayerNorm (Miras §1.5.1)
    mlp_first_layer_std: float = 0.5  # std of W_0's first MLP layer (its inputs are unit-norm keys)
    last_layer_std: float = 0.0  # std of W_0's last layer (the matrix itself); 0 = an empty memory
    activation: str = dataclasses.field(default="gelu", metadata=_choices(*memory_spec.ACTIVATIONS))
    objective: str = dataclasses.field(default="l2", metadata=_registered(memory_parts.OBJECTIVES))
    retention: str = dataclasses.field(default="scalar", metadata=_registered(memory_parts.RETENTIONS))
    learner: str = dataclasses.field(default="momentum", metadata=_registered(memory_parts.LEARNERS))
    semantics: str = dataclasses.field(default="anchored", metadata=_choices(*memory_spec.SEMANTICS))
    chunk_size: int = 16
    bilevel: str = dataclasses.field(default="full", metadata=_choices(*memory_spec.BILEVEL))
    gradient_at: str = dataclasses.field(default="previous", metadata=_choices(*memory_spec.GRADIENT_POINTS))
    window: int = 1  # the Omega rule's window c (ATLAS Eq. 9): each write descends the last c tokens' loss
    window_gates: str = dataclasses.field(default="token", metadata=_choices(*memory_spec.WINDOW_GATES))  # gamma per
    # token (gamma_i) or per lag of each step (gamma_t in R^window, ATLAS spec §3.11)
    window_gate_init: float = 0.9  # window > 1: the window weights gamma at initialisation
    max_grad_norm: float = 4.0  # clip each token's inner gradient to this norm (0 = off; docs/fidelity.md)
    kernel_chunk: int = 64  # tile of an exact memory's kernels op (how it computes, not what)
    kernel_backend: str = "auto"  # that op's backend: auto, a kernels.IMPLEMENTATIONS name, or "a,b" tried in order
    num_heads: int = 0  # 0 = model.num_heads
    head_dim: int = 0  # 0 = model.d_model // memory heads
    key_dim: int = 0  # q and k size per head (Lattice's m slots); 0 = head_dim
    conv_width: int = 4  # causal depthwise conv on q, k, v (Titans §4.4)
    lr_max: float = 0.1  # inner learning rate rho_t = lr_max * sigmoid(x w + b)
    lr_init: float = 0.01  # rho_t at initialisation (sets the gate bias b)
    momentum_init: float = 0.5  # momentum decay mu_t at initialisation (0.9 diverges on long documents)
    # learner=muon (ATLAS): the outer step eta_t = muon_lr_max * sigmoid(x w + b) outside Newton-Schulz
    muon_lr_max: float = 0.1
    muon_lr_init: float = 0.01  # eta_t at initialisation (sets b)
    huber_delta_init: float = 1.0  # objective=huber (Yaad): the threshold delta_t at initialisation (> 0)
    retention_gate: str = dataclasses.field(default="sigmoid", metadata=_choices("sigmoid", "mamba2"))
    forget_init: float = 0.01  # sigmoid gate: fraction forgotten alpha_t = 1 - retention at initialisation
    gate_rank: int = 0  # the memory's gates from x: 0 = one linear map each; r > 0 = D -> r -> gates (Miras: 32, 64)
    qk_activation: str = dataclasses.field(default="silu", metadata=_registered(memory_parts.FEATURE_MAPS))
    output_gate_bias: float = 1.0  # output gate SiLU(x W_G + b): b at initialisation
    # objective=compression (Trellis): phi of the loss 1/2 ||phi(M w) - alpha||^2 (spec T1)
    compression_map: str = dataclasses.field(default="ln_silu", metadata=_choices(*memory_spec.COMPRESSION_MAPS))
    # model.name=trellis: m memory slots per head (0 = the head dim), the inter-pass map r = f(K q)
    # (spec T2), and the inner step gamma per head at initialisation (softplus; the forget gate beta
    # starts at 1 - forget_init)
    slots: int = 0
    slot_map: str = dataclasses.field(default="ln_silu", metadata=_choices("ln_silu", "l2_silu"))
    step_init: float = 0.01


@dataclasses.dataclass(frozen=True)
class ModelConfig:
    """The network. `name` picks a builder from `zoo.registry`; the other fields are shared."""

    name: str = "transformer"
    vocab_size: int = 512
    d_model: int = 64
    num_layers: int = 2
    num_heads: int = 4
    num_kv_heads: int = 0  # 0 = num_heads (multi-head); fewer = grouped-query attention
    head_dim: int = 0  # 0 = d_model // num_heads
    mlp_dim: int = 0  # 0 = SwiGLU default: 8/3 * d_model rounded up to a multiple of 32
    rope_theta: float = 10000.0
    sliding_window: int = 0  # 0 = full causal attention; W > 0 = each token sees W tokens
    attn_conv_width: int = 0  # 0 = off; K > 0 = causal depthwise conv on q/k/v inputs
    # attention kernel (zoo.layers.attend): auto = cuDNN flash on GPU where it applies, else blockwise
    # (O(T * 512) memory) past 512 tokens, else xla (dense scores); pallas_triton: opt-in Triton flash;
    # tokamax: opt-in, tokamax's flash kernels (GPU / TPU), needs `pip install 'memzoo[tokamax]'`
    attention: str = dataclasses.field(default="auto", metadata=_choices(*ATTENTION_IMPLEMENTATIONS))
    tie_embeddings: bool = True
    norm_eps: float = 1e-6
    init_std: float = 0.02
    dtype: str = dataclasses.field(default="float32", metadata=_choices("float32", "bfloat16"))
    # recompute activations in the backward pass: "none"; "block" (each block keeps only its input);
    # "memory" (the memory mixers are recomputed, attention and MLP activations kept). With either,
    # identical blocks run as one lax.scan over stacked layers (zoo.models.lm).
    remat: str = dataclasses.field(default="none", metadata=_choices("none", "block", "memory"))
    # Titans MAG gate: o = y * sigmoid(RMSNorm_b(memory)); true = RMSNorm_a(y) * sigmoid(...), the
    # spec's reading of "normalize the outputs" (slower to learn: docs/fidelity.md, issue 9)
    mag_attention_norm: bool = False
    # Titans MAC: what its memory writes, the block's input tokens ("input": the memory is Titans' LMM
    # over the token stream, y only gates its read) or the attention output y ("attention": Eq. 24 as
    # printed, slow to learn recall: docs/fidelity.md, issue 9)
    mac_write: str = dataclasses.field(default="input", metadata=_choices("input", "attention"))
    persistent_tokens: int = 0  # Titans' persistent memory: learned key/value slots every query sees
    # n > 0: every n-th block is a Transformer++ attention block (window: sliding_window) between the
    # model's own (Samba-style hybrids: Miras-H / GDN-H, n = 2); models registered with hybrid=True
    hybrid_attention: int = 0
    # the attention layers' decoding cache (zoo.layers.kv_cache): dtype model|bfloat16|float32, or
    # quantized int8|int4_kivi|turbo_mse|turbo_prod with bits (turbo), recent (full-precision tokens, 128)
    kv_cache: KVCacheFormat = KVCacheFormat()
    # model.name=polysketchformer: the sketch (learned | random, size r), block and exact local attention
    polysketch: PolySketchFormat = PolySketchFormat()
    # model.name=msssm: the multi-scale SSM mixer (variant s6 | s4, scales S, kernel K, state N per branch)
    msssm: MSSSMFormat = MSSSMFormat()
    # model.name=tnt: the local memories (chunk sizes, shard length S_L), the global branch, the Q-K
    # projection; the global memory is model.memory (its chunk_size is TNT's C_G)
    tnt: TNTFormat = TNTFormat()
    # model.name=hope: the self-modifying Titans mixer (chunk, memory width, gates) and the continuum
    # memory's levels (one update period each)
    hope: HopeFormat = HopeFormat()
    memory: MemoryConfig = MemoryConfig()


@dataclasses.dataclass(frozen=True)
class MQARConfig:
    """Multi-query associative recall (Zoology semantics), see zoo.data.synthetic.mqar."""

    num_pairs: int = 8  # key-value pairs written at the start of each sequence
    key_vocab: int = 0  # 0 = half of the non-special vocabulary for keys, the rest for values
    power_a: float = 0.01  # Zoology's power-law gap distribution between a key and its query


@dataclasses.dataclass(frozen=True)
class NIAHConfig:
    """Training on a needle task (source=niah), see zoo.data.synthetic.niah."""

    task: str = dataclasses.field(default="s_niah_1", metadata=_choices(
        "s_niah_1", "s_niah_2", "s_niah_3", "mk_niah", "mv_niah", "mq_niah"))
    haystack_path: str = ""  # a text file for essay haystacks ("" = the built-in corpus)


@dataclasses.dataclass(frozen=True)
class DataConfig:
    """Where tokens come from and how they are packed into batches."""

    source: str = dataclasses.field(
        default="builtin", metadata=_choices("builtin", "files", "hf", "shards", "mqar", "niah")
    )
    shards_dir: str = ""  # source=shards: a store written by scripts/prepare_data.py
    paths: tuple[str, ...] = ()  # source=files: local .txt / .jsonl / .parquet files
    text_field: str = "text"  # column holding the text in jsonl / parquet / hf rows
    hf_name: str = ""  # source=hf: dataset name on the hub (streamed; needs network)
    hf_config: str = ""
    hf_split: str = "train"
    max_documents: int = 0  # 0 = all documents of the source (files / hf: required for hf)
    tokenizer: str = dataclasses.field(
        default="sentencepiece", metadata=_choices("sentencepiece", "bytes")
    )
    tokenizer_path: str = ""  # an existing .model file instead of training one
    seq_len: int = 128
    align_documents: int = 0  # >1: documents start at multiples of this (a memory's chunk size)
    batch_size: int = 16  # global batch (sequences per optimizer step, all devices together)
    heldout_fraction: float = 0.05  # share of documents kept out of training for evaluation
    seed: int = 0
    mqar: MQARConfig = MQARConfig()
    niah: NIAHConfig = NIAHConfig()


@dataclasses.dataclass(frozen=True)
class OptimizerConfig:
    name: str = dataclasses.field(default="adamw", metadata=_choices("adamw"))
    learning_rate: float = 3e-3
    b1: float = 0.9
    b2: float = 0.95
    eps: float = 1e-8
    weight_decay: float = 0.1  # applied to matrices only, not to norms or biases
    grad_clip: float = 1.0  # global-norm clipping; 0 = off


@dataclasses.dataclass(frozen=True)
class ScheduleConfig:
    kind: str = dataclasses.field(default="cosine", metadata=_choices("cosine", "linear", "constant"))
    warmup_steps: int = 100
    min_lr_ratio: float = 0.1  # final learning rate as a fraction of the peak
    decay_steps: int = 0  # 0 = train.steps


@dataclasses.dataclass(frozen=True)
class MeshConfig:
    """Device mesh sizes; exactly one axis may be -1 (all the devices the others leave)."""

    data: int = -1
    fsdp: int = 1
    tensor: int = 1


@dataclasses.dataclass(frozen=True)
class CheckpointConfig:
    every_steps: int = 200
    keep: int = 3  # newest N checkpoints kept
    async_save: bool = True


@dataclasses.dataclass(frozen=True)
class TrainConfig:
    steps: int = 1000
    grad_accum: int = 1  # micro-batches per optimizer step; data.batch_size must divide by it
    loss_chunk: int = 1024  # positions per piece of the chunked cross-entropy (0 = whole sequence)
    seed: int = 0
    log_every: int = 20
    eval_every: int = 0  # 0 = only at the end
    progress_bar: bool = True
    # peak FLOP/s of one device for the logged MFU; 0 = the table of known devices
    # (zoo.training.flops.PEAK_FLOPS; no MFU on devices it does not know, e.g. CPU)
    peak_flops: float = 0.0
    # fine-tuning (TNT's stage 2): start from the parameters of another run's checkpoint (a train.py
    # --workdir; init_step 0 = its newest) with a fresh optimizer at step 0; ignored once this run
    # has a checkpoint of its own (a restart resumes it)
    init_from: str = ""
    init_step: int = 0
    # a regular expression over parameter paths ("blocks/0/mixer/init_state/0"): only matching
    # parameters train; the others stay frozen and get no optimizer state ("" = all train)
    trainable: str = ""


@dataclasses.dataclass(frozen=True)
class EvalConfig:
    batch_size: int = 16
    max_batches: int = 20  # held-out batches for perplexity; 0 = the whole held-out split


@dataclasses.dataclass(frozen=True)
class Config:
    model: ModelConfig = ModelConfig()
    data: DataConfig = DataConfig()
    optimizer: OptimizerConfig = OptimizerConfig()
    schedule: ScheduleConfig = ScheduleConfig()
    mesh: MeshConfig = MeshConfig()
    checkpoint: CheckpointConfig = CheckpointConfig()
    train: TrainConfig = TrainConfig()
    eval: EvalConfig = EvalConfig()


# ---------------------------------------------------------------------------------------------
# Building dataclasses from plain values, with messages that say what is wrong.


def _type_name(tp: Any) -> str:
    return getattr(tp, "__name__", str(tp))


def _coerce(value: Any, tp: Any, key: str) -> Any:
    """Checks / converts a YAML (or override) value to the annotated field type."""
    origin = typing.get_origin(tp)
    if origin in (types.UnionType, typing.Union):
        errors = []
        for arm in typing.get_args(tp):
            if arm is type(None):
                if value is None:
                    return None
                continue
            try:
                return _coerce(value, arm, key)
            except ConfigError as e:
                errors.append(str(e))
        raise ConfigError(errors[0] if errors else f"{key}: None is not allowed")
    if origin is tuple:
        (item_tp, _ellipsis) = typing.get_args(tp)
        if isinstance(value, str):
            value = [v for v in value.split(",") if v]
        if not isinstance(value, (list, tuple)):
            raise ConfigError(f"{key}: expected a list, got {value!r}")
        return tuple(_coerce(v, item_tp, f"{key}[{i}]") for i, v in enumerate(value))
    if dataclasses.is_dataclass(tp):
        if not isinstance(value, dict):
            raise ConfigError(f"{key}: expected a mapping of {_type_name(tp)} fields, got {value!r}")
        return _build(tp, value, key)
    if tp is bool:
        if isinstance(value, bool):
            return value
        if isinstance(value, str) and value.lower() in ("true", "false", "1", "0", "yes", "no"):
            return value.lower() in ("true", "1", "yes")
        raise ConfigError(f"{key}: expected true or false, got {value!r}")
    if tp is int:
        if isinstance(value, bool):
            raise ConfigError(f"{key}: expected an integer, got {value!r}")
        if isinstance(value, int):
            return value
        if isinstance(value, float) and value.is_integer():
            return int(value)
        if isinstance(value, str):
            try:
                return int(value.replace("_", ""))
            except ValueError:
                pass
        raise ConfigError(f"{key}: expected an integer, got {value!r}")
    if tp is float:
        if isinstance(value, bool):
            raise ConfigError(f"{key}: expected a number, got {value!r}")
        if isinstance(value, (int, float)):
            return float(value)
        if isinstance(value, str):
            try:
                return float(value)
            except ValueError:
                pass
        raise ConfigError(f"{key}: expected a number, got {value!r}")
    if tp is str:
        if isinstance(value, (str, int, float)) and not isinstance(value, bool):
            return str(value)
        raise ConfigError(f"{key}: expected a string, got {value!r}")
    raise ConfigError(f"{key}: unsupported field type {tp}")


def _unknown_key_message(key: str, name: str, valid: list[str]) -> str:
    close = difflib.get_close_matches(name, valid, n=1, cutoff=0.5)
    hint = f" Did you mean '{key.rpartition('.')[0] + '.' if '.' in key else ''}{close[0]}'?" if close else ""
    return f"unknown config key '{key}'.{hint} Valid keys here: {', '.join(sorted(valid))}."


def _build(cls: type, values: dict, prefix: str = "") -> Any:
    hints = typing.get_type_hints(cls)
    fields = {f.name: f for f in dataclasses.fields(cls)}
    kwargs = {}
    for name, value in values.items():
        key = f"{prefix}.{name}" if prefix else str(name)
        if name not in fields:
            raise ConfigError(_unknown_key_message(key, str(name), list(fields)))
        coerced = _coerce(value, hints[name], key)
        choices = fields[name].metadata.get("choices")
        if choices and coerced not in choices:
            choices = list(choices)
            close = difflib.get_close_matches(str(coerced), choices, n=1, cutoff=0.4)
            hint = f" Did you mean '{close[0]}'?" if close else ""
            raise ConfigError(
                f"{key}: '{coerced}' is not allowed; choose one of {', '.join(choices)}.{hint}"
            )
        kwargs[name] = coerced
    try:
        return cls(**kwargs)
    except ValueError as e:  # a section's own check (its __post_init__), message starting with the field
        raise ConfigError(f"{prefix}.{e}" if prefix else str(e)) from None


def to_dict(cfg: Any) -> dict:
    """A plain (YAML / JSON-ready) nested dict of a config dataclass."""
    out = {}
    for f in dataclasses.fields(cfg):
        v = getattr(cfg, f.name)
        if dataclasses.is_dataclass(v):
            v = to_dict(v)
        elif isinstance(v, tuple):
            v = list(v)
        out[f.name] = v
    return out


def _set_path(tree: dict, dotted: str, value: Any) -> None:
    parts = dotted.split(".")
    node = tree
    for p in parts[:-1]:
        nxt = node.get(p)
        if not isinstance(nxt, dict):
            nxt = {}
            node[p] = nxt
        node = nxt
    node[parts[-1]] = value


def _parse_override(text: str) -> tuple[str, Any]:
    if "=" not in text:
        raise ConfigError(
            f"override '{text}' has no '='; write it as section.field=value, e.g. train.steps=100"
        )
    key, raw = text.split("=", 1)
    key = key.strip()
    if not key:
        raise ConfigError(f"override '{text}' names no key; write section.field=value")
    try:
        value = yaml.safe_load(raw) if raw.strip() else ""
    except yaml.YAMLError:
        value = raw
    if isinstance(value, (dict,)):
        value = raw
    return key, value


def validate(cfg: Config) -> Config:
    """Cross-field checks that a single field's type cannot express."""
    from zoo import registry  # late: the registry imports the models

    m, d, t = cfg.model, cfg.data, cfg.train
    names = list(registry.models())
    if m.name not in names:
        close = difflib.get_close_matches(m.name, names, n=1, cutoff=0.4)
        hint = f" Did you mean '{close[0]}'?" if close else ""
        raise ConfigError(f"model.name: unknown model '{m.name}'; registered: {', '.join(names)}.{hint}")

    if registry.models()[m.name].uses_memory:
        _validate_memory(cfg)
    if m.name == "hope":
        try:
            m.hope.check()
        except ValueError as e:
            raise ConfigError(f"model.{e}") from None
        c = m.hope.chunk
        if d.source not in ("mqar", "niah") and c > 1 and (d.align_documents < c or d.align_documents % c):
            raise ConfigError(f"model.hope.chunk={c}: packed documents must start on the self-modifying memories' "
                              f"chunk grid; set data.align_documents={c} (a multiple of it; got {d.align_documents})")
    if t.trainable:
        try:
            re.compile(t.trainable)
        except re.error as e:
            raise ConfigError(f"train.trainable={t.trainable!r} is not a regular expression: {e}") from None
    if t.init_step < 0 or (t.init_step and not t.init_from):
        raise ConfigError(f"train.init_step={t.init_step} needs train.init_from (a run's workdir) and must be >= 0 "
                          "(0 = its newest checkpoint)")
    if m.hybrid_attention:
        hybrids = [name for name, info in registry.models().items() if info.hybrid]
        if not registry.models()[m.name].hybrid:
            raise ConfigError(f"model.hybrid_attention={m.hybrid_attention}: model '{m.name}' has no hybrid form (its "
                              f"blocks attend already, or it is attention); models that take it: {', '.join(hybrids)}")
        if not 1 <= m.hybrid_attention <= m.num_layers:
            raise ConfigError(f"model.hybrid_attention must be 0 (off) or between 1 and model.num_layers="
                              f"{m.num_layers} (every n-th block attends), got {m.hybrid_attention}")

    def positive(key: str, value: float) -> None:
        if value <= 0:
            raise ConfigError(f"{key} must be > 0, got {value}")

    for key, value in [
        ("model.vocab_size", m.vocab_size), ("model.d_model", m.d_model),
        ("model.num_layers", m.num_layers), ("model.num_heads", m.num_heads),
        ("data.seq_len", d.seq_len), ("data.batch_size", d.batch_size),
        ("train.steps", t.steps), ("train.grad_accum", t.grad_accum),
        ("train.log_every", t.log_every), ("checkpoint.every_steps", cfg.checkpoint.every_steps),
        ("checkpoint.keep", cfg.checkpoint.keep), ("eval.batch_size", cfg.eval.batch_size),
        ("optimizer.learning_rate", cfg.optimizer.learning_rate),
    ]:
        positive(key, value)
    for key, value in [
        ("model.num_kv_heads", m.num_kv_heads), ("model.head_dim", m.head_dim),
        ("model.mlp_dim", m.mlp_dim), ("model.sliding_window", m.sliding_window),
        ("model.attn_conv_width", m.attn_conv_width), ("schedule.warmup_steps", cfg.schedule.warmup_steps),
        ("schedule.decay_steps", cfg.schedule.decay_steps), ("train.eval_every", t.eval_every),
        ("eval.max_batches", cfg.eval.max_batches), ("optimizer.weight_decay", cfg.optimizer.weight_decay),
        ("optimizer.grad_clip", cfg.optimizer.grad_clip),
    ]:
        if value < 0:
            raise ConfigError(f"{key} must be >= 0, got {value}")
    if m.head_dim == 0 and m.d_model % m.num_heads:
        raise ConfigError(
            f"model.d_model={m.d_model} is not divisible by model.num_heads={m.num_heads}; "
            "change one of them or set model.head_dim explicitly"
        )
    kv = m.num_kv_heads or m.num_heads
    if m.num_heads % kv:
        raise ConfigError(
            f"model.num_heads={m.num_heads} is not a multiple of model.num_kv_heads={kv}; "
            "grouped-query attention needs num_heads = k * num_kv_heads"
        )
    constant_state = {"polysketchformer": "attends through sketches", "msssm": "mixes tokens with SSMs"}
    if m.name in constant_state and (m.sliding_window or m.attn_conv_width or m.num_kv_heads
                                     or m.persistent_tokens or m.kv_cache.dtype != "model"):
        raise ConfigError(f"{m.name} {constant_state[m.name]} with a constant-size state: it takes no "
                          "model.sliding_window, attn_conv_width, num_kv_heads, persistent_tokens or kv_cache "
                          f"(got {m.sliding_window}, {m.attn_conv_width}, {m.num_kv_heads}, {m.persistent_tokens}, "
                          f"{m.kv_cache.dtype}); set them to 0 / model")
    if m.kv_cache.dtype != "model" and m.name == "titans_mac":
        raise ConfigError(f"model.kv_cache.dtype={m.kv_cache.dtype}: titans_mac caches one segment of keys "
                          f"(memory.chunk_size={m.memory.chunk_size} tokens) and reads the rest from its memory; "
                          "its cache follows model.dtype: use model.kv_cache.dtype=model")
    if m.attention == "pallas_triton" and m.sliding_window:
        raise ConfigError(f"model.attention=pallas_triton has no sliding window (model.sliding_window="
                          f"{m.sliding_window}); use model.attention=auto or blockwise, or sliding_window=0")
    if m.attention == "tokamax" and not tokamax_attention.available():
        raise ConfigError("model.attention=tokamax needs the tokamax package: pip install 'memzoo[tokamax]', "
                          "or use model.attention=auto")
    if (m.head_dim or m.d_model // m.num_heads) % 2:
        raise ConfigError("the attention head dimension must be even for rotary embeddings; "
                          "change model.d_model / model.num_heads or model.head_dim")
    if d.batch_size % t.grad_accum:
        raise ConfigError(
            f"data.batch_size={d.batch_size} is not divisible by train.grad_accum={t.grad_accum}; "
            "each micro-batch must hold the same number of sequences"
        )
    if d.align_documents < 0 or (d.align_documents > 1 and d.seq_len % d.align_documents):
        raise ConfigError(f"data.align_documents={d.align_documents} must be >= 0 and divide "
                          f"data.seq_len={d.seq_len}")
    if not 0.0 <= d.heldout_fraction < 1.0:
        raise ConfigError(f"data.heldout_fraction must be in [0, 1), got {d.heldout_fraction}")
    if d.source == "files" and not d.paths:
        raise ConfigError("data.source=files needs data.paths (a list of .txt/.jsonl/.parquet files)")
    if d.source == "shards" and not d.shards_dir:
        raise ConfigError("data.source=shards needs data.shards_dir (a directory written by "
                          "`python scripts/prepare_data.py --config CFG --out DIR`)")
    if d.source == "hf" and not d.hf_name:
        raise ConfigError("data.source=hf needs data.hf_name (a dataset name on the hub)")
    if d.source == "hf" and d.max_documents <= 0:
        raise ConfigError("data.source=hf streams the dataset; set data.max_documents to how many "
                          "documents to take (e.g. data.max_documents=100000)")
    if d.tokenizer == "bytes" and d.source != "mqar" and m.vocab_size < 259:
        raise ConfigError(f"data.tokenizer=bytes needs model.vocab_size >= 259 (256 bytes + pad/bos/eos), "
                          f"got {m.vocab_size}")
    if d.source == "mqar":
        if d.seq_len < 4 * d.mqar.num_pairs:
            raise ConfigError(
                f"data.seq_len={d.seq_len} is too short for data.mqar.num_pairs={d.mqar.num_pairs}: "
                "MQAR needs seq_len >= 4 * num_pairs"
            )
        if m.vocab_size < 4 + 2 * d.mqar.num_pairs:
            raise ConfigError(f"model.vocab_size={m.vocab_size} is too small for "
                              f"data.mqar.num_pairs={d.mqar.num_pairs}: MQAR needs 4 special ids plus "
                              "disjoint key and value ids, vocab_size >= 4 + 2 * num_pairs")
        if d.mqar.key_vocab > m.vocab_size - 4 - d.mqar.num_pairs:
            raise ConfigError(f"data.mqar.key_vocab={d.mqar.key_vocab} leaves fewer than num_pairs="
                              f"{d.mqar.num_pairs} value ids in model.vocab_size={m.vocab_size}; lower it "
                              "(0 = half of the ids)")
    if m.sliding_window and m.sliding_window < 1:
        raise ConfigError("model.sliding_window must be 0 (off) or a positive window")
    sizes = [cfg.mesh.data, cfg.mesh.fsdp, cfg.mesh.tensor]
    if sum(1 for s in sizes if s == -1) > 1 or any(s == 0 or s < -1 for s in sizes):
        raise ConfigError(f"mesh sizes (data, fsdp, tensor) = {tuple(sizes)}: each must be a positive "
                          "size and at most one may be -1 (the rest of the devices)")
    return cfg


def _validate_memory(cfg: Config) -> None:
    """Checks of models with associative-memory mixers (see zoo.memory.MemorySpec)."""
    from zoo.memory.engine import delta_kernel, dual_form

    mem = cfg.model.memory
    try:
        spec = memory_spec.MemorySpec.of(mem)
    except ValueError as e:
        raise ConfigError(f"model.memory: {e}") from None
    heads = mem.num_heads or cfg.model.num_heads
    if mem.head_dim == 0 and cfg.model.d_model % heads:
        raise ConfigError(f"model.d_model={cfg.model.d_model} is not divisible by the memory heads ({heads}); "
                          "set model.memory.num_heads or model.memory.head_dim")
    if mem.key_dim < 0:
        raise ConfigError(f"model.memory.key_dim must be >= 0 (0 = the head dim), got {mem.key_dim}")
    if mem.gate_rank < 0:
        raise ConfigError(f"model.memory.gate_rank must be >= 0 (0 = full-rank gates; Miras uses 32 or 64), "
                          f"got {mem.gate_rank}")
    if mem.lr_max < 0:
        raise ConfigError(f"model.memory.lr_max must be >= 0, got {mem.lr_max}")
    if mem.lr_max > 0 and not 0 < mem.lr_init < mem.lr_max:
        raise ConfigError(f"model.memory.lr_init={mem.lr_init} must lie strictly between 0 and "
                          f"model.memory.lr_max={mem.lr_max} (the gate is lr_max * sigmoid)")
    if not 0 < mem.muon_lr_init < mem.muon_lr_max:
        raise ConfigError(f"model.memory.muon_lr_init={mem.muon_lr_init} must lie strictly between 0 and "
                          f"model.memory.muon_lr_max={mem.muon_lr_max} (the gate is muon_lr_max * sigmoid)")
    for key in ("mlp_first_layer_std", "last_layer_std"):
        if getattr(mem, key) < 0:
            raise ConfigError(f"model.memory.{key} must be >= 0 (a standard deviation), got {getattr(mem, key)}")
    for key in ("momentum_init", "forget_init", "window_gate_init"):
        if not 0 < getattr(mem, key) < 1:
            raise ConfigError(f"model.memory.{key} must lie strictly between 0 and 1 (a sigmoid gate's "
                              f"initial value), got {getattr(mem, key)}")
    if mem.retention == "lq" and mem.last_layer_std == 0 and not 2 <= mem.lq_q < 3:
        raise ConfigError(f"model.memory.retention=lq with lq_q={mem.lq_q} starts its accumulator at "
                          "A_0 = W_0 ||W_0||_q^((q-2)/(3-q)), singular at W_0 = 0: set model.memory.last_layer_std > 0 "
                          "(Moneta's default 0.3)")
    if mem.huber_delta_init <= 0:
        raise ConfigError(f"model.memory.huber_delta_init must be > 0 (a softplus gate's initial value), "
                          f"got {mem.huber_delta_init}")
    head_dim = mem.head_dim or cfg.model.d_model // heads
    key_dim = memory_parts.feature_map(mem.qk_activation).out_dim(head_dim)
    if mem.residual and mem.structure != "matrix" and key_dim != head_dim:
        raise ConfigError(f"model.memory.residual=true adds the key to the memory's output, but "
                          f"qk_activation={mem.qk_activation!r} lifts keys to {key_dim} features for values of "
                          f"{head_dim}; set model.memory.residual=false or a feature map that keeps the size")
    if mem.conv_width < 1:
        raise ConfigError(f"model.memory.conv_width must be >= 1, got {mem.conv_width}")
    if mem.slots < 0:
        raise ConfigError(f"model.memory.slots must be >= 0 (Trellis's m memory slots per head; 0 = the head "
                          f"dim {head_dim}), got {mem.slots}")
    if mem.step_init <= 0:
        raise ConfigError(f"model.memory.step_init must be > 0 (Trellis's inner step gamma at initialisation, a "
                          f"softplus; the spec's 1e-2), got {mem.step_init}")
    if cfg.model.name == "trellis":
        _validate_trellis(mem)
    if mem.max_grad_norm > 0 and delta_kernel(dataclasses.replace(spec, max_grad_norm=0.0)) is not None:
        raise ConfigError(f"model.memory.max_grad_norm={mem.max_grad_norm}: the exact delta rule's kernels do not "
                          "clip the inner step, so this memory would run token by token; set "
                          "model.memory.max_grad_norm=0 (unit keys bound the delta rule's step) or semantics=anchored")
    c = mem.chunk_size
    grid = dual_form(spec)  # the chunk grid is part of the model; exact delta-rule memories have none
    what = f"model.memory.chunk_size={c}"
    if cfg.model.name == "tnt":
        try:
            cfg.model.tnt.check(spec)
        except ValueError as e:
            raise ConfigError(f"model.{e}" if str(e).startswith("tnt.") else str(e)) from None
        c = cfg.model.tnt.grid(mem.chunk_size)
        what = (f"TNT's grid ({c}: the lcm of model.memory.chunk_size, model.tnt.shard and "
                f"model.tnt.local_chunks)")
    if grid and cfg.data.source not in ("mqar", "niah") and c > 1 and (
            cfg.data.align_documents < c or cfg.data.align_documents % c):
        raise ConfigError(
            f"{what}: packed documents must start on the memory's chunk grid; set "
            f"data.align_documents={c} (a multiple of the chunk size; got {cfg.data.align_documents})")


def _validate_trellis(mem: MemoryConfig) -> None:
    """Trellis's memory is fixed by the paper up to the knobs it leaves open (docs/fidelity.md)."""
    fixed = dict(structure="matrix", objective="compression", learner="gd", retention="scalar", window=1,
                 gradient_at="previous", max_grad_norm=0.0)
    wrong = {key: getattr(mem, key) for key, value in fixed.items() if getattr(mem, key) != value}
    if wrong:
        raise ConfigError("model.name=trellis: model.memory " + ", ".join(f"{k}={v!r}" for k, v in wrong.items())
                          + " is not Trellis's memory (one OGD step with a forget gate on the compression loss: "
                          + ", ".join(f"{k}={v!r}" for k, v in fixed.items()) + "); the choices it leaves open are "
                          "compression_map, slot_map, slots, step_init, forget_init, chunk_size, semantics and bilevel")
    if mem.qk_activation != "silu" or mem.retention_gate != "sigmoid":
        raise ConfigError(f"model.name=trellis uses raw keys and the sigmoid forget gate beta_t: model.memory."
                          f"qk_activation={mem.qk_activation!r} and retention_gate={mem.retention_gate!r} have no "
                          "effect on it; leave them at their defaults (silu, sigmoid)")


def _with_model_memory_defaults(values: dict) -> dict:
    """Puts the named model's registered memory defaults (zoo.registry) under the file's own
    model.memory values, so `model.name=gated_deltanet` alone gives the Gated DeltaNet memory."""
    from zoo import registry  # late: the registry imports the models

    model = values.get("model")
    if model is not None and not isinstance(model, dict):
        return values  # _build reports the type error
    model = model or {}
    info = registry.models().get(model.get("name", ModelConfig.name))
    memory = model.get("memory")
    if info is None or not info.memory_defaults or not (memory is None or isinstance(memory, dict)):
        return values
    return {**values, "model": {**model, "memory": {**info.memory_defaults, **(memory or {})}}}


def _with_legacy_remat(values: dict) -> dict:
    """`model.remat: true/false` (before remat policies) means "block" / "none"."""
    model = values.get("model")
    if not isinstance(model, dict) or not isinstance(model.get("remat"), bool):
        return values
    return {**values, "model": {**model, "remat": "block" if model["remat"] else "none"}}


def from_dict(values: dict) -> Config:
    if not isinstance(values, dict):
        raise ConfigError(f"a config must be a mapping of sections, got {type(values).__name__}")
    return validate(_build(Config, _with_model_memory_defaults(_with_legacy_remat(values))))


def load_config(path: str | Path | None = None, overrides: list[str] | tuple[str, ...] = ()) -> Config:
    """Reads a YAML config, applies `section.field=value` overrides, validates, returns `Config`."""
    values: dict = {}
    if path is not None:
        path = Path(path)
        if not path.is_file():
            raise ConfigError(f"config file '{path}' does not exist; pass a YAML file such as "
                              "configs/quickstart.yaml")
        try:
            loaded = yaml.safe_load(path.read_text())
        except yaml.YAMLError as e:
            raise ConfigError(f"config file '{path}' is not valid YAML: {e}") from e
        values = loaded or {}
        if not isinstance(values, dict):
            raise ConfigError(f"config file '{path}' must hold a mapping of sections")
    for text in overrides:
        key, value = _parse_override(text)
        _set_path(values, key, value)
    try:
        return from_dict(values)
    except ConfigError as e:
        where = f" (in {path})" if path is not None else ""
        raise ConfigError(f"{e}{where}") from None


def save_config(cfg: Config, path: str | Path) -> None:
    """Writes the resolved config as YAML (and reads back to the same Config)."""
    Path(path).write_text(yaml.safe_dump(to_dict(cfg), sort_keys=False))


def config_json(cfg: Config) -> str:
    return json.dumps(to_dict(cfg), sort_keys=True)
