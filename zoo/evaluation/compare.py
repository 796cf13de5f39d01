"""`eval.py --compare DIR1 DIR2 ...`: several checkpoints' results on one plot and one table.

Each argument is a run's workdir (its newest `eval/step_<N>.json` is used) or an eval JSON file.
"""

from __future__ import annotations

import json
import re
from pathlib import Path

from zoo.evaluation import plots
from zoo.evaluation.run import accuracy_series
from zoo.evaluation.tables import grid


def find_result(path: str | Path) -> Path:
    """An eval JSON file, or the newest `eval/step_<N>.json` of a workdir."""
    path = Path(path)
    if path.is_file():
        return path
    steps = {int(m.group(1)): p for p in (path / "eval").glob("step_*.json")
             if (m := re.fullmatch(r"step_(\d+)\.json", p.name))}
    if not steps:
        raise FileNotFoundError(f"{path} holds no eval results (eval/step_<N>.json): run "
                                f"`python eval.py --workdir {path} --tasks ...` first, or pass a result JSON")
    return steps[max(steps)]


def load_results(paths: list[str | Path]) -> dict[str, list[dict]]:
    """label ('<workdir name>@<step>') -> records, in the order given."""
    out: dict[str, list[dict]] = {}
    for p in paths:
        f = find_result(p)
        try:
            data = json.loads(f.read_text())
            label = f"{Path(data['workdir']).name}@{data['step']}"
            records = data["results"]
        except (ValueError, KeyError) as e:
            raise ValueError(f"{f} is not an eval.py result file ({e}); pass a workdir or an eval JSON") from None
        while label in out:
            label += "'"
        out[label] = records
    return out


def compare(paths: list[str | Path], out_dir: str | Path) -> tuple[str, list[Path]]:
    """Loads each result, draws accuracy vs length per task (one line per checkpoint) and the
    perplexity-vs-position curves at each run's longest length; returns (table, PNG paths)."""
    if len(paths) < 1:
        raise ValueError("--compare needs at least one workdir or result JSON")
    results = load_results(paths)
    out_dir = Path(out_dir)
    per_task: dict[str, dict[str, list[tuple[int, float]]]] = {}
    for label, records in results.items():
        for task, points in accuracy_series(records).items():
            per_task.setdefault(task, {})[label] = points
    files = [plots.accuracy_vs_length(series, out_dir / f"compare_{task}.png", f"{task}: accuracy vs length")
             for task, series in per_task.items()]
    curves = {}
    for label, records in results.items():
        pos = [r for r in records if r["task"] == "ppl_by_position"]
        if pos:
            longest = max(pos, key=lambda r: r["length"])
            curves[f"{label} ({plots.format_length(longest['length'])})"] = (longest["positions"],
                                                                              longest["position_perplexity"])
    if curves:
        files.append(plots.perplexity_vs_position(curves, out_dir / "compare_ppl_by_position.png",
                                                  "perplexity vs position"))
    labels = list(results)
    rows = []
    for task, series in per_task.items():
        lengths = sorted({n for pts in series.values() for n, _ in pts})
        for n in lengths:
            vals = [dict(series.get(lab, [])).get(n) for lab in labels]
            rows.append([task, plots.format_length(n)] + ["" if v is None else f"{100 * v:.1f}" for v in vals])
    table = grid(["task", "length"] + labels, rows, "accuracy % (averaged over depths)") if rows else \
        "no accuracy results to compare"
    return table, files
