"""Console tables of evaluation records: one per needle task (rows lengths, columns depths), one
for the other accuracy tasks (rows lengths, columns tasks), one per perplexity kind."""

from __future__ import annotations

from collections.abc import Sequence

from zoo.evaluation.plots import format_length


def grid(header: Sequence[str], rows: Sequence[Sequence[str]], title: str) -> str:
    widths = [max(len(h), *(len(r[i]) for r in rows)) for i, h in enumerate(header)]
    line = lambda vals: "  ".join(v.rjust(w) for v, w in zip(vals, widths))
    return "\n".join([title, line(header), line(["-" * w for w in widths])] + [line(r) for r in rows])


def _pct(value: float | None) -> str:
    return "" if value is None else f"{100 * value:.1f}"


def _mean(values: list[float]) -> float:
    return sum(values) / len(values)


def needle_table(task: str, records: list[dict]) -> str:
    depths = sorted({r["depth"] for r in records})
    lengths = sorted({r["length"] for r in records})
    cell = {(r["length"], r["depth"]): r["accuracy"] for r in records}
    rows = []
    for n in lengths:
        vals = [cell.get((n, d)) for d in depths]
        rows.append([format_length(n)] + [_pct(v) for v in vals] + [_pct(_mean([v for v in vals if v is not None]))])
    return grid(["length"] + [f"{d:.0%}" for d in depths] + ["mean"], rows, f"{task}: accuracy % (rows length, columns depth)")


def accuracy_table(records: list[dict]) -> str:
    tasks = list(dict.fromkeys(r["task"] for r in records))
    lengths = sorted({r["length"] for r in records})
    cell = {(r["task"], r["length"]): r["accuracy"] for r in records}
    rows = [[format_length(n)] + [_pct(cell.get((t, n))) for t in tasks] for n in lengths]
    return grid(["length"] + tasks, rows, "accuracy % (rows length, columns task)")


def ppl_by_position_table(records: list[dict]) -> str:
    lengths = [r["length"] for r in records]
    ends = sorted({e for r in records for e in r["positions"]})
    by = {(r["length"], e): p for r in records for e, p in zip(r["positions"], r["position_perplexity"])}
    rows = [[f"<={format_length(e)}"] + [f"{by[(n, e)]:.3f}" if (n, e) in by else "" for n in lengths] for e in ends]
    rows.append(["all"] + [f"{r['perplexity']:.3f}" for r in records])
    return grid(["position"] + [format_length(n) for n in lengths], rows,
                "ppl_by_position: perplexity (rows position bucket, columns context length)")


def ppl_table(records: list[dict]) -> str:
    cols = ["step", "loss", "perplexity", "accuracy", "tokens"]
    rows = [[f"{r[c]:.4f}" if isinstance(r.get(c), float) else str(r.get(c, "")) for c in cols] for r in records]
    return grid(cols, rows, "ppl: held-out perplexity")


def format_tables(records: list[dict]) -> str:
    """All tables for a list of records, in the order the tasks ran."""
    by_task: dict[str, list[dict]] = {}
    for r in records:
        by_task.setdefault(r["task"], []).append(r)
    parts, flat = [], []
    for task, recs in by_task.items():
        if task == "ppl":
            parts.append(ppl_table(recs))
        elif task == "ppl_by_position":
            parts.append(ppl_by_position_table(recs))
        elif recs[0].get("depth") is not None:
            parts.append(needle_table(task, recs))
        else:
            flat.extend(recs)
    if flat:
        parts.append(accuracy_table(flat))
    return "\n\n".join(parts)
