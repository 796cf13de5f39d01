"""What `eval.py` was asked to do: task names, lengths, depths and sample counts, parsed and checked."""

from __future__ import annotations

import dataclasses
import difflib

from zoo.layers.kv_cache import FLOAT_DTYPES, QUANTIZED_DTYPES, KVCacheFormat

NEEDLE_TASKS = ("s_niah_1", "s_niah_2", "s_niah_3", "mk_niah", "mv_niah", "mq_niah")
BABILONG_TASKS = tuple(f"babilong_qa{i}" for i in range(1, 6))
ALL_TASKS = ("ppl", "ppl_by_position", *NEEDLE_TASKS, *BABILONG_TASKS, "mqar")
GROUPS = {"niah": NEEDLE_TASKS, "babilong": BABILONG_TASKS}
DEFAULT_DEPTHS = (0.0, 0.25, 0.5, 0.75, 1.0)


@dataclasses.dataclass(frozen=True)
class EvalSettings:
    """lengths: prompt / context lengths in tokens (None = each task's default); depths: needle
    depths in [0, 1]; num_samples: samples per (task, length, depth) cell; max_length: drop longer
    lengths; batch_size: sequences per device call; segment_len: streaming segment in tokens;
    haystack: a text file for essay haystacks (None = built-in corpus); babilong_data: a folder of
    official BABILong splits (`<dir>/<length>/<qa>.jsonl`, used where present); seed: generator seed;
    kv_cache: the attention layers' decoding cache, "DTYPE[:BITS]" (e.g. int8, turbo_mse:3; "" = the
    run's own `model.kv_cache`), with kv_recent full-precision recent tokens."""

    lengths: tuple[int, ...] | None = None
    depths: tuple[float, ...] = DEFAULT_DEPTHS
    num_samples: int = 8
    max_length: int | None = None
    batch_size: int = 8
    segment_len: int = 2048
    haystack: str | None = None
    babilong_data: str | None = None
    seed: int = 0
    progress: bool = True
    kv_cache: str = ""
    kv_recent: int = 0

    def __post_init__(self):
        for name in ("num_samples", "batch_size", "segment_len"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise ValueError(f"--{name.replace('_', '-')} must be a positive integer, got {value!r}")
        if self.max_length is not None and self.max_length < 1:
            raise ValueError(f"--max-length must be a positive number of tokens, got {self.max_length}")
        if not self.depths or any(not 0.0 <= d <= 1.0 for d in self.depths):
            raise ValueError(f"--depths must be fractions (or percentages) in [0, 1], got {self.depths}")
        if self.kv_cache:
            self.kv_cache_format()  # a bad --kv-cache fails before the checkpoint loads

    def kv_cache_format(self):
        """The `--kv-cache DTYPE[:BITS]` / `--kv-recent N` format (a zoo.KVCacheFormat), or None."""
        if not self.kv_cache:
            return None
        dtype, _, bits = self.kv_cache.partition(":")
        if dtype not in FLOAT_DTYPES + QUANTIZED_DTYPES or (bits and not bits.isdigit()):
            raise ValueError(f"--kv-cache must be DTYPE[:BITS] with DTYPE one of {', '.join(FLOAT_DTYPES + QUANTIZED_DTYPES)}"
                             f" (BITS 1-4 for turbo_*), got {self.kv_cache!r}")
        try:
            return KVCacheFormat(dtype=dtype, bits=int(bits or 4), recent=self.kv_recent)
        except ValueError as e:
            raise ValueError(f"--kv-cache {self.kv_cache!r}: {e}") from None

    def lengths_for(self, task: str, task_defaults: tuple[int, ...]) -> tuple[int, ...]:
        """The lengths to run for `task`: the asked ones (else the task's defaults) up to
        max_length; a ValueError if max_length leaves none."""
        lengths = self.lengths if self.lengths is not None else task_defaults
        kept = tuple(n for n in lengths if self.max_length is None or n <= self.max_length)
        if not kept:
            raise ValueError(f"{task}: no length is <= --max-length {self.max_length} (lengths "
                             f"{', '.join(map(str, lengths))}); raise --max-length or give shorter --lengths")
        return kept


def parse_tasks(text: str) -> list[str]:
    """'s_niah_1,mqar' -> ['s_niah_1', 'mqar']; 'niah' and 'babilong' expand to their tasks;
    unknown names are rejected with a suggestion."""
    names: list[str] = []
    for name in (t.strip() for t in text.split(",")):
        if not name:
            continue
        expanded = GROUPS.get(name, (name,))
        for n in expanded:
            if n not in ALL_TASKS:
                close = difflib.get_close_matches(n, list(ALL_TASKS) + list(GROUPS), n=1)
                hint = f" Did you mean '{close[0]}'?" if close else ""
                raise ValueError(f"unknown task '{n}'; available tasks: {', '.join(ALL_TASKS)} "
                                 f"(groups: {', '.join(GROUPS)}).{hint}")
            if n not in names:
                names.append(n)
    if not names:
        raise ValueError(f"--tasks is empty; available tasks: {', '.join(ALL_TASKS)}")
    return names


def parse_length(text: str) -> int:
    """'4k' -> 4096, '1m' -> 1048576, '512' -> 512, '0k' -> 0 (k = 1024 tokens, as RULER and
    BABILong name their lengths)."""
    t = text.strip().lower()
    scale = {"k": 1024, "m": 1024 * 1024}.get(t[-1:], 1)
    number = t[:-1] if scale > 1 else t
    try:
        value = float(number)
    except ValueError:
        raise ValueError(f"bad length '{text}': write a token count like 512, 4k or 1m") from None
    if value < 0 or value * scale != int(value * scale):
        raise ValueError(f"bad length '{text}': must be a whole, non-negative number of tokens")
    return int(value * scale)


def parse_lengths(text: str | None) -> tuple[int, ...] | None:
    if text is None:
        return None
    lengths = tuple(parse_length(t) for t in text.split(",") if t.strip())
    if not lengths:
        raise ValueError("--lengths is empty; give e.g. --lengths 1k,4k")
    return lengths


def parse_depths(text: str | None) -> tuple[float, ...]:
    """'0,0.5,1' or '0,50,100' (percent, when any value is > 1) -> fractions in [0, 1]."""
    if text is None:
        return DEFAULT_DEPTHS
    try:
        values = [float(t) for t in text.split(",") if t.strip()]
    except ValueError:
        raise ValueError(f"bad --depths '{text}': give fractions like 0,0.5,1 or percentages like 0,50,100") from None
    if any(v > 1.0 for v in values):
        values = [v / 100.0 for v in values]
    return tuple(values)
