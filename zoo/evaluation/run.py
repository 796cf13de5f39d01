"""`eval.py`'s engine: restore a checkpoint, run the named tasks, write tables and JSON."""

from __future__ import annotations

import datetime
import difflib
import json
from collections.abc import Callable
from pathlib import Path

import jax

from zoo.data import load_tokenizer, make_data
from zoo.evaluation.perplexity import evaluate_perplexity
from zoo.training.restore import RestoredRun, restore_run
from zoo.training.sharding import put_global_batch


def ppl_task(run: RestoredRun) -> dict:
    """Held-out perplexity on the run's own held-out split (documents never trained on)."""
    cfg = run.cfg
    data = make_data(cfg, tokenizer=load_tokenizer(run.workdir))
    batches = data.heldout_batches(cfg.eval.batch_size, cfg.eval.max_batches)
    rt = run.runtime
    rt.check_batch(cfg.eval.batch_size, "eval.batch_size")
    result = evaluate_perplexity(rt.eval_step, run.state.params, batches, lambda b: put_global_batch(b, rt.mesh))
    return {"task": "ppl", **result, "source": cfg.data.source, "seq_len": cfg.data.seq_len}


TASKS: dict[str, Callable[[RestoredRun], dict]] = {"ppl": ppl_task}


def parse_tasks(text: str) -> list[str]:
    """'ppl,mqar' -> ['ppl', 'mqar'], rejecting unknown names with a suggestion."""
    names = [t.strip() for t in text.split(",") if t.strip()]
    if not names:
        raise ValueError(f"--tasks is empty; available tasks: {', '.join(TASKS)}")
    for name in names:
        if name not in TASKS:
            close = difflib.get_close_matches(name, list(TASKS), n=1)
            hint = f" Did you mean '{close[0]}'?" if close else ""
            raise ValueError(f"unknown task '{name}'; available tasks: {', '.join(TASKS)}.{hint}")
    return names


def format_table(records: list[dict]) -> str:
    cols = ["task", "step", "loss", "perplexity", "accuracy", "tokens"]
    rows = [[("%.4f" % r[c]) if isinstance(r.get(c), float) else str(r.get(c, "")) for c in cols] for r in records]
    widths = [max(len(c), *(len(row[i]) for row in rows)) for i, c in enumerate(cols)]
    line = lambda vals: "  ".join(v.rjust(w) for v, w in zip(vals, widths))
    return "\n".join([line(cols), line(["-" * w for w in widths])] + [line(r) for r in rows])


def run(workdir: str | Path, tasks: list[str], step: int | None = None, devices: list | None = None,
        output: str | Path | None = None) -> tuple[list[dict], Path]:
    """Evaluates checkpoint `step` (default newest) of `workdir` on `tasks`.

    Returns the records and the JSON path (default `<workdir>/eval/step_<N>.json`).
    """
    restored = restore_run(workdir, step, devices)
    records = [{**TASKS[name](restored), "step": restored.step} for name in tasks]
    path = Path(output) if output else Path(workdir) / "eval" / f"step_{restored.step}.json"
    if jax.process_index() == 0:
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(json.dumps({
            "workdir": str(Path(workdir).absolute()), "step": restored.step, "model": restored.cfg.model.name,
            "devices": restored.runtime.mesh.devices.size,
            "time": datetime.datetime.now(datetime.UTC).isoformat(), "results": records}, indent=2))
    return records, path
