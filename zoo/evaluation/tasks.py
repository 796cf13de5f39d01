"""Long-context tasks on a restored checkpoint: needles, BABILong-style QA, MQAR, perplexity by position.

Each task runner takes a `TaskContext` and returns result records, one per task x length
(x depth), each with an `accuracy` (or `perplexity`) field, the generator's version string and
the number of samples. Long prompts are streamed through the model in segments with its carried
cache (`zoo.streaming`, `zoo.generate(segment_len=...)`), answers are decoded greedily.
"""

from __future__ import annotations

import dataclasses
import functools
import itertools
import math
import zlib
from collections.abc import Callable

import jax
import numpy as np
from flax import nnx

from zoo.data.errors import DataError
from zoo.data.pipeline import make_data
from zoo.data.sources import load_documents, split_documents
from zoo.data.synthetic.babi import TASK_LABELS
from zoo.data.synthetic.babilong import (
    BABILONG_LENGTHS,
    BABILONG_VERSION,
    babilong_sample,
    find_official_file,
    official_samples,
)
from zoo.data.synthetic.haystack import Haystack, PromptSample, encode_piece, make_haystack
from zoo.data.synthetic.mqar import MQAR_VERSION, key_value_ranges, mqar_batch
from zoo.data.synthetic.niah import NIAH_TASKS, NIAH_VERSION, niah_sample
from zoo.evaluation.perplexity import evaluate_perplexity
from zoo.evaluation.plots import format_length
from zoo.evaluation.scoring import babilong_correct, string_match_all
from zoo.evaluation.settings import EvalSettings
from zoo.generation import generate
from zoo.streaming import stream_logits, stream_nll
from zoo.training.restore import RestoredRun
from zoo.training.sharding import put_global_batch

NEEDLE_LENGTHS = (1024, 2048, 4096)
BABILONG_DEFAULT_LENGTHS = (0, 1024, 2048, 4096)
NOT_LEADERBOARD = "generator-based, not leaderboard-comparable"
OFFICIAL_NOTE = ("official BABILong samples (lengths in the dataset's GPT-2 tokens); our plain template "
                 "without BABILong's instructions and examples")


def default_lengths(task: str, cfg) -> tuple[int, ...]:
    """Each task's lengths when --lengths is not given."""
    if task.startswith("babilong_"):
        return BABILONG_DEFAULT_LENGTHS
    if task == "mqar":
        return (cfg.data.seq_len,) if cfg.data.source == "mqar" else (256,)
    if task == "ppl_by_position":
        return tuple(cfg.data.seq_len * k for k in (1, 2, 4, 8))
    if task == "ppl":
        return (cfg.data.seq_len,)
    return NEEDLE_LENGTHS


@dataclasses.dataclass
class TaskContext:
    """restored: the checkpoint (config, runtime, train state); tokenizer: the run's tokenizer;
    report: prints one progress line."""

    restored: RestoredRun
    tokenizer: object
    settings: EvalSettings
    report: Callable[[str], None]
    haystacks: dict[str, Haystack] = dataclasses.field(default_factory=dict)

    @property
    def cfg(self):
        return self.restored.cfg

    @functools.cached_property
    def model(self) -> nnx.Module:
        return self.restored.model

    def haystack(self, kind: str) -> Haystack:
        if kind not in self.haystacks:
            self.haystacks[kind] = make_haystack(kind, self.tokenizer, self.settings.haystack)
        return self.haystacks[kind]

    def rng(self, task: str, *cell) -> np.random.Generator:
        """Independent, reproducible generator per (seed, task, cell)."""
        return np.random.default_rng((self.settings.seed, zlib.crc32(task.encode()), *cell))

    def lengths(self, task: str) -> tuple[int, ...]:
        """The lengths task `task` runs at (--lengths or its defaults, up to --max-length)."""
        return self.settings.lengths_for(task, default_lengths(task, self.cfg))

    def check_text_model(self, task: str) -> None:
        vocab = self.cfg.model.vocab_size
        if self.tokenizer.vocab_size > vocab:
            raise DataError(f"{task} is a text task, but this run's tokenizer has {self.tokenizer.vocab_size} "
                            f"ids and the model only {vocab} (a model trained on token tasks such as "
                            "MQAR?); evaluate a text-trained checkpoint")


def _batches(rows: list, size: int) -> list[tuple[list, int]]:
    """Rows cut into batches of exactly `size` (the last one padded by repeating its last row,
    so one compiled shape serves all); returns (batch, number of real rows)."""
    out = []
    for i in range(0, len(rows), size):
        chunk = rows[i:i + size]
        out.append((chunk + [chunk[-1]] * (size - len(chunk)), len(chunk)))
    return out


def generate_replies(ctx: TaskContext, samples: list[PromptSample], max_new_tokens: int) -> list[str]:
    """Greedy replies (text, cut at the first eos) to each sample's prompt, in order. Samples
    of equal prompt length share batches of min(batch_size, number of samples)."""
    tok, size = ctx.tokenizer, min(ctx.settings.batch_size, len(samples))
    replies: dict[int, str] = {}
    by_length: dict[int, list[int]] = {}
    for i, s in enumerate(samples):
        by_length.setdefault(len(s.prompt), []).append(i)
    for length, index in by_length.items():
        for batch, real in _batches(index, size):
            prompts = np.stack([samples[i].prompt for i in batch])
            out = np.asarray(jax.device_get(generate(ctx.model, prompts, max_new_tokens,
                                                     segment_len=ctx.settings.segment_len)))
            for i, row in zip(batch[:real], out[:real, length:]):
                eos = np.flatnonzero(row == tok.eos_id)
                replies[i] = tok.decode(row[: eos[0]] if eos.size else row)
    return [replies[i] for i in range(len(samples))]


def ppl_task(ctx: TaskContext, name: str = "ppl") -> list[dict]:
    """Held-out perplexity on the run's own held-out split (documents never trained on), at the
    training sequence length, through the training runtime's eval step."""
    cfg, rt = ctx.cfg, ctx.restored.runtime
    data = make_data(cfg, tokenizer=ctx.tokenizer)
    batches = data.heldout_batches(cfg.eval.batch_size, cfg.eval.max_batches)
    rt.check_batch(cfg.eval.batch_size, "eval.batch_size")
    result = evaluate_perplexity(rt.eval_step, ctx.restored.state.params, batches,
                                 lambda b: put_global_batch(b, rt.mesh))
    ctx.report(f"ppl: perplexity {result['perplexity']:.4f}")
    return [{"task": name, **result, "length": cfg.data.seq_len, "depth": None, "source": cfg.data.source}]


def _babilong_label(length: int) -> str:
    """BABILong's name for a length ('0k', '1k', ...), which names its official data folders."""
    return {n: label for label, n in BABILONG_LENGTHS.items()}.get(length, format_length(length))


def needle_task(ctx: TaskContext, name: str) -> list[dict]:
    """RULER-style needle task `name` over the length x depth grid (string_match_all)."""
    ctx.check_text_model(name)
    hay = ctx.haystack(NIAH_TASKS[name].haystack)
    s = ctx.settings
    records = []
    for length in ctx.lengths(name):
        for d_index, depth in enumerate(s.depths):
            rng = ctx.rng(name, length, d_index)
            samples = [niah_sample(name, rng, ctx.tokenizer, hay, length, depth) for _ in range(s.num_samples)]
            max_new = max(len(encode_piece(ctx.tokenizer, ", ".join(x.answers))) for x in samples) + 4
            replies = generate_replies(ctx, samples, max_new)
            acc = float(np.mean([string_match_all(r, x.answers) for r, x in zip(replies, samples)]))
            records.append({"task": name, "length": length, "depth": depth, "accuracy": acc,
                            "num_samples": len(samples), "version": NIAH_VERSION, "haystack": hay.source,
                            "example": {"answers": list(samples[0].answers), "reply": replies[0]}})
            ctx.report(f"{name} length={format_length(length)} depth={depth:.0%}: accuracy {acc:.1%}")
    return records


def babilong_task(ctx: TaskContext, name: str) -> list[dict]:
    """BABILong-style QA task `name` ('babilong_qa1'..'babilong_qa5') over lengths (label-set rule)."""
    ctx.check_text_model(name)
    qa = name.removeprefix("babilong_")
    labels = TASK_LABELS[qa]
    s = ctx.settings
    max_new = max(len(encode_piece(ctx.tokenizer, lab)) for lab in labels) + 8
    records = []
    for length in ctx.lengths(name):
        official = find_official_file(s.babilong_data, qa, _babilong_label(length)) if s.babilong_data else None
        hay = None
        if official is not None:
            samples = official_samples(official, qa, ctx.tokenizer, s.num_samples)
            version, note = f"official BABILong file {official}", OFFICIAL_NOTE
        else:
            if s.babilong_data:
                ctx.report(f"{name} length={format_length(length)}: no official file in {s.babilong_data}, generating")
            hay = ctx.haystack("essay") if length > 0 else None
            rng = ctx.rng(name, length)
            samples = [babilong_sample(qa, rng, ctx.tokenizer, hay, length) for _ in range(s.num_samples)]
            version, note = BABILONG_VERSION, NOT_LEADERBOARD
        replies = generate_replies(ctx, samples, max_new)
        acc = float(np.mean([babilong_correct(r, x.answers, x.question, labels) for r, x in zip(replies, samples)]))
        records.append({"task": name, "length": length, "depth": None, "accuracy": acc,
                        "num_samples": len(samples), "version": version, "note": note,
                        "haystack": hay.source if hay else None,
                        "example": {"question": samples[0].question, "answers": list(samples[0].answers),
                                    "reply": replies[0]}})
        ctx.report(f"{name} length={format_length(length)}: accuracy {acc:.1%}")
    return records


def mqar_task(ctx: TaskContext, name: str = "mqar") -> list[dict]:
    """MQAR accuracy at query positions (argmax of the streamed logits == the paired value),
    with the run's data.mqar settings and the model's vocabulary."""
    cfg, s = ctx.cfg, ctx.settings
    m, vocab = cfg.data.mqar, cfg.model.vocab_size
    chance = 1.0 / len(key_value_ranges(vocab, m.key_vocab)[1])
    records = []
    for length in ctx.lengths(name):
        batch = mqar_batch(ctx.rng(name, length), s.num_samples, length, vocab, m.num_pairs, m.key_vocab, m.power_a)
        rows = list(range(s.num_samples))
        correct = total = 0.0
        for index, real in _batches(rows, min(s.batch_size, len(rows))):
            logits = stream_logits(ctx.model, batch["inputs"][index], min(s.segment_len, length))
            pred = np.asarray(jax.device_get(logits.argmax(-1)))[:real]
            mask = batch["loss_mask"][index][:real]
            correct += float(((pred == batch["targets"][index][:real]) * mask).sum())
            total += float(mask.sum())
        acc = correct / total
        records.append({"task": name, "length": length, "depth": None, "accuracy": acc,
                        "num_samples": s.num_samples, "queries": int(total), "num_pairs": m.num_pairs,
                        "vocab_size": vocab, "chance": chance, "version": MQAR_VERSION})
        ctx.report(f"{name} length={format_length(length)}: accuracy {acc:.1%} (chance {chance:.1%})")
    return records


def _heldout_stream(ctx: TaskContext) -> np.ndarray:
    """The run's held-out documents, tokenized as in training ([bos] doc [eos]), concatenated."""
    d = ctx.cfg.data
    if d.source in ("mqar", "niah"):
        raise DataError("ppl_by_position needs a run trained on text (data.source builtin, files or hf), "
                        f"this one trained on {d.source}")
    _, held = split_documents(load_documents(d), d.heldout_fraction, d.seed)
    if not held:
        raise DataError("ppl_by_position needs held-out documents; the run has data.heldout_fraction=0")
    tok = ctx.tokenizer
    return np.concatenate([np.asarray([tok.bos_id, *ids, tok.eos_id], np.int32) for ids in tok.encode_batch(held)])


def position_buckets(length: int) -> list[tuple[int, int]]:
    """[start, end) position buckets doubling in size: [0,1), [1,2), [2,4), ... up to length."""
    edges = [0] + [2 ** i for i in range(int(math.log2(max(length, 1))) + 1) if 2 ** i < length] + [length]
    return list(itertools.pairwise(edges))


def ppl_by_position_task(ctx: TaskContext, name: str = "ppl_by_position") -> list[dict]:
    """Perplexity of held-out text vs token position, one record per context length: contiguous
    held-out text cut into num_samples rows of `length` tokens (fewer if the text runs out)."""
    ctx.check_text_model(name)
    s = ctx.settings
    text = _heldout_stream(ctx)
    records = []
    for length in ctx.lengths(name):
        rows = min(s.num_samples, (len(text) - 1) // length)
        if rows < 1:
            raise DataError(f"ppl_by_position at length {length}: the held-out text has only {len(text)} "
                            "tokens; use shorter --lengths or more held-out data (data.heldout_fraction)")
        inputs = np.stack([text[i * length:(i + 1) * length] for i in range(rows)])
        targets = np.stack([text[i * length + 1:(i + 1) * length + 1] for i in range(rows)])
        nll = np.concatenate([np.asarray(jax.device_get(stream_nll(
            ctx.model, inputs[idx], targets[idx], min(s.segment_len, length))))[:real]
            for idx, real in _batches(list(range(rows)), min(s.batch_size, rows))])
        buckets = position_buckets(length)
        records.append({"task": name, "length": length, "depth": None,
                        "perplexity": math.exp(float(nll.mean())), "rows": rows, "tokens": int(nll.size),
                        "positions": [end for _, end in buckets],
                        "position_perplexity": [math.exp(float(nll[:, a:b].mean())) for a, b in buckets]})
        ctx.report(f"{name} length={format_length(length)}: perplexity {records[-1]['perplexity']:.3f}")
    return records
