"""`eval.py`'s engine: restore a checkpoint, run the named tasks, write tables, JSON and plots.

    records, files = run("runs/quickstart", ["s_niah_1", "mqar"], settings=EvalSettings(lengths=(1024,)))

Outputs (process 0): `<workdir>/eval/step_<N>.json` (or `output`) with one record per task x
length (x depth) and the settings, and PNGs next to it in `<workdir>/eval/step_<N>/`: a needle
heatmap (depth x length) per needle task, accuracy vs length of all accuracy tasks, perplexity
vs position.
"""

from __future__ import annotations

import contextlib
import dataclasses
import datetime
import json
import sys
from collections.abc import Callable
from pathlib import Path

import jax

from zoo.data import load_tokenizer
from zoo.evaluation import plots
from zoo.evaluation.settings import BABILONG_TASKS, NEEDLE_TASKS, EvalSettings, parse_tasks
from zoo.evaluation.tasks import (
    TaskContext,
    babilong_task,
    mqar_task,
    needle_task,
    ppl_by_position_task,
    ppl_task,
)
from zoo.layers.kv_cache import set_kv_cache
from zoo.training.metrics import progress_bar, tensorboard_writer, write_scalars
from zoo.training.restore import restore_run

TASKS: dict[str, Callable[[TaskContext, str], list[dict]]] = {
    "ppl": ppl_task, "ppl_by_position": ppl_by_position_task, "mqar": mqar_task,
    **{name: needle_task for name in NEEDLE_TASKS}, **{name: babilong_task for name in BABILONG_TASKS}}

__all__ = ["TASKS", "parse_tasks", "run", "write_plots"]


def write_plots(records: list[dict], directory: Path, label: str) -> list[Path]:
    """The PNGs of one evaluation (module docstring); returns their paths."""
    paths = []
    for task in dict.fromkeys(r["task"] for r in records if r.get("depth") is not None):
        recs = [r for r in records if r["task"] == task]
        paths.append(plots.needle_heatmap(recs, directory / f"{task}_heatmap.png", f"{task} accuracy ({label})"))
    series = accuracy_series(records)
    if series:
        paths.append(plots.accuracy_vs_length(series, directory / "accuracy_vs_length.png", f"accuracy vs length ({label})"))
    by_pos = {plots.format_length(r["length"]): (r["positions"], r["position_perplexity"])
              for r in records if r["task"] == "ppl_by_position"}
    if by_pos:
        paths.append(plots.perplexity_vs_position(by_pos, directory / "ppl_by_position.png",
                                                  f"perplexity vs position ({label})"))
    return paths


def accuracy_series(records: list[dict]) -> dict[str, list[tuple[int, float]]]:
    """task -> [(length, accuracy averaged over depths)] for every accuracy task."""
    cells: dict[str, dict[int, list[float]]] = {}
    for r in records:
        if "accuracy" in r and r["task"] != "ppl":
            cells.setdefault(r["task"], {}).setdefault(r["length"], []).append(r["accuracy"])
    return {t: [(n, sum(v) / len(v)) for n, v in sorted(by_len.items())] for t, by_len in cells.items()}


def _write_json(path: Path, payload: dict) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    payload = {**payload, "time": datetime.datetime.now(datetime.UTC).isoformat()}
    path.write_text(json.dumps(payload, indent=2))


def run(workdir: str | Path, tasks: list[str], step: int | None = None, devices: list | None = None,
        output: str | Path | None = None, settings: EvalSettings | None = None,
        make_plots: bool = True) -> tuple[list[dict], list[Path]]:
    """Evaluates checkpoint `step` (default newest) of `workdir` on `tasks`.

    Returns the records and the files written (JSON first, then PNGs).
    """
    settings = settings or EvalSettings()
    for name in tasks:
        if name not in TASKS:
            parse_tasks(name)  # raises with a suggestion
    restored = restore_run(workdir, step, devices)
    if settings.kv_cache:
        set_kv_cache(restored.model, settings.kv_cache_format())
    main = jax.process_index() == 0
    total = len(tasks)

    def report(line: str) -> None:
        if settings.progress and main:
            print(f"{progress_bar(done, total)} {line}", file=sys.stderr, flush=True)

    ctx = TaskContext(restored, load_tokenizer(workdir), settings, report)
    for name in tasks:  # bad --lengths / --max-length fail before anything runs
        if name != "ppl":
            ctx.lengths(name)
    path = Path(output) if output else Path(workdir) / "eval" / f"step_{restored.step}.json"
    header = {"workdir": str(Path(workdir).absolute()), "step": restored.step, "model": restored.cfg.model.name,
              "devices": restored.runtime.mesh.devices.size,
              "settings": {**dataclasses.asdict(settings), "tasks": tasks}}
    records: list[dict] = []
    try:
        for done, name in enumerate(tasks):
            records += [{**r, "step": restored.step} for r in TASKS[name](ctx, name)]
    except Exception as e:
        if main and records:  # keep what finished
            _write_json(path, {**header, "incomplete": f"{type(e).__name__}: {e}", "results": records})
            if isinstance(e, ValueError):  # our input errors (DataError, ConfigError): name the file
                raise type(e)(f"{e} (the {len(records)} results before it are in {path})") from e
        raise
    done = total
    report("done")
    files = [path]
    if main:
        label = f"{Path(workdir).name} step {restored.step}"
        if make_plots:
            files += write_plots(records, path.with_suffix(""), label)
        _write_json(path, {**header, "results": records, "plots": [str(p) for p in files[1:]]})
        _write_tensorboard(workdir, records, restored.step)
    return records, files


def _write_tensorboard(workdir, records: list[dict], step: int) -> None:
    """Each result's numbers as TensorBoard scalars `eval/<task>[/len<L>][/depth<D>]/<metric>` at the
    checkpoint's step, next to the training curves in `<workdir>/tensorboard`."""
    writer = tensorboard_writer(Path(workdir))
    if writer is None:
        return
    with contextlib.closing(writer):
        for r in records:
            where = [f"{tag}{r[k]}" for k, tag in (("length", "len"), ("depth", "depth")) if r.get(k) is not None]
            name = "/".join(["eval", str(r["task"]), *where])
            write_scalars(writer, {k: v for k, v in r.items() if k not in ("length", "depth")}, step, name + "/")
