"""PNG plots of long-context evaluation results (needle heatmaps, accuracy and perplexity curves).

matplotlib is imported lazily with the non-interactive "Agg" backend, so importing this module
costs nothing and plotting works on machines without a display.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

FIGSIZE = (6.0, 4.0)  # inches
DPI = 100


def _pyplot():
    """Returns `matplotlib.pyplot` with the non-interactive Agg backend selected."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def _save(fig, path) -> Path:
    """Writes `fig` as a PNG to `path` (creating parent folders), closes it, returns the Path."""
    plt = _pyplot()
    path = Path(path)
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        fig.savefig(path, dpi=DPI, format="png")
    finally:
        plt.close(fig)
    return path


def format_length(n: int) -> str:
    """A token count as a short label: 512 -> "512", 1024 -> "1k", 1536 -> "1.5k", 16384 -> "16k",
    1048576 -> "1M" (binary units; up to two decimals)."""
    n = int(n)
    for unit, suffix in ((1024**2, "M"), (1024, "k")):
        if abs(n) >= unit:
            return f"{round(n / unit, 2):g}{suffix}"
    return str(n)


def needle_heatmap(records: list[dict], path, title: str) -> Path:
    """Depth x length grid of needle-retrieval accuracy, written as a PNG to `path`.

    `records`: results of one task, each a dict with "length" (int, context tokens), "depth"
    (float in [0, 1], where the needle sits) and "accuracy" (float in [0, 1]). Rows are depths in
    percent, 0% at the top; columns are lengths, ascending. Cells are coloured red (0) to green (1)
    and annotated with the accuracy in integer percent; (length, depth) pairs with no record stay
    blank. Raises ValueError for an empty list, a record without a depth, records of several
    tasks, or two records for the same (length, depth) cell.
    """
    if not records:
        raise ValueError("needle_heatmap: no records to plot")
    tasks = {r["task"] for r in records if "task" in r}
    if len(tasks) > 1:
        raise ValueError(f"needle_heatmap: records of one task expected, got {sorted(tasks)}")
    cells: dict[tuple[int, float], float] = {}
    for r in records:
        if r.get("depth") is None:
            raise ValueError(f"needle_heatmap: record has no depth (task {r.get('task')!r}, length "
                             f"{r.get('length')}); only depth-swept tasks can be drawn as a heatmap")
        key = (int(r["length"]), float(r["depth"]))
        if key in cells:
            raise ValueError(f"needle_heatmap: several records for length {key[0]}, depth {key[1]}")
        cells[key] = float(r["accuracy"])

    lengths = sorted({length for length, _ in cells})
    depths = sorted({depth for _, depth in cells})
    grid = np.full((len(depths), len(lengths)), np.nan)
    for (length, depth), acc in cells.items():
        grid[depths.index(depth), lengths.index(length)] = acc

    plt = _pyplot()
    cmap = plt.get_cmap("RdYlGn").with_extremes(bad="white")
    fig, ax = plt.subplots(figsize=FIGSIZE)
    image = ax.imshow(np.ma.masked_invalid(grid), cmap=cmap, vmin=0.0, vmax=1.0, aspect="auto",
                      origin="upper", interpolation="nearest")
    for i in range(len(depths)):
        for j in range(len(lengths)):
            acc = grid[i, j]
            if not np.isnan(acc):
                color = "white" if acc < 0.15 or acc > 0.85 else "black"
                ax.text(j, i, f"{round(acc * 100)}", ha="center", va="center", fontsize=8, color=color)
    ax.set_xticks(range(len(lengths)), [format_length(n) for n in lengths])
    ax.set_yticks(range(len(depths)), [f"{d * 100:g}%" for d in depths])
    ax.set_xlabel("context length (tokens)")
    ax.set_ylabel("needle depth")
    ax.set_title(title)
    fig.colorbar(image, ax=ax, label="accuracy")
    fig.tight_layout()
    return _save(fig, path)


def accuracy_vs_length(series: dict[str, list[tuple[int, float]]], path, title: str) -> Path:
    """Accuracy against context length, one line with markers per label, written as a PNG.

    `series`: label (task or checkpoint name) -> list of (length in tokens, accuracy in [0, 1]).
    The x axis is log2-scaled with labels like "1k"; the y axis spans 0..100%.
    Raises ValueError if `series` is empty or a label has no points.
    """
    if not series:
        raise ValueError("accuracy_vs_length: no series to plot")
    from matplotlib.ticker import NullLocator, PercentFormatter

    plt = _pyplot()
    fig, ax = plt.subplots(figsize=FIGSIZE)
    all_lengths: set[int] = set()
    for label, points in series.items():
        if not points:
            plt.close(fig)
            raise ValueError(f"accuracy_vs_length: series {label!r} has no points")
        points = sorted((int(n), float(a)) for n, a in points)
        all_lengths.update(n for n, _ in points)
        ax.plot([n for n, _ in points], [a for _, a in points], marker="o", label=label)
    ax.set_xscale("log", base=2)
    ticks = sorted(all_lengths)
    ax.xaxis.set_minor_locator(NullLocator())
    ax.set_xticks(ticks, [format_length(n) for n in ticks])
    ax.set_ylim(-0.02, 1.02)
    ax.yaxis.set_major_formatter(PercentFormatter(xmax=1.0))
    ax.set_xlabel("context length (tokens)")
    ax.set_ylabel("accuracy")
    ax.set_title(title)
    ax.grid(True, alpha=0.3)
    ax.legend()
    fig.tight_layout()
    return _save(fig, path)


def perplexity_vs_position(series: dict[str, tuple[list[int], list[float]]], path, title: str) -> Path:
    """Perplexity against token position, one line per label, written as a PNG.

    `series`: label -> (positions, perplexities), two equally long lists: bucket end positions
    (positive ints) and the perplexity of each bucket (positive floats). Both axes are log-scaled (x in base 2, labels like "1k").
    Raises ValueError if `series` is empty, a label has no points, the lists differ in length, or a
    value is not positive.
    """
    if not series:
        raise ValueError("perplexity_vs_position: no series to plot")
    for label, (positions, ppl) in series.items():
        if not positions or len(positions) != len(ppl):
            raise ValueError(f"perplexity_vs_position: series {label!r} needs equally long, non-empty "
                             f"positions and perplexities (got {len(positions)} and {len(ppl)})")
        if any(p <= 0 for p in positions) or any(not v > 0 for v in ppl):
            raise ValueError(f"perplexity_vs_position: series {label!r} has a non-positive position or "
                             "perplexity (both axes are log-scaled)")

    from matplotlib.ticker import FuncFormatter, LogFormatter, LogLocator, NullFormatter

    plt = _pyplot()
    fig, ax = plt.subplots(figsize=FIGSIZE)
    for label, (positions, ppl) in series.items():
        ax.plot(positions, ppl, marker=".", label=label)
    ax.set_xscale("log", base=2)
    ax.xaxis.set_major_locator(LogLocator(base=2))
    ax.xaxis.set_major_formatter(FuncFormatter(lambda x, _: format_length(round(x))))
    ax.xaxis.set_minor_formatter(NullFormatter())
    ax.set_yscale("log")
    ax.yaxis.set_major_formatter(LogFormatter(labelOnlyBase=False))
    ax.yaxis.set_minor_formatter(LogFormatter(labelOnlyBase=False, minor_thresholds=(2, 0.5)))
    ax.set_xlabel("token position")
    ax.set_ylabel("perplexity")
    ax.set_title(title)
    ax.grid(True, which="both", alpha=0.3)
    ax.legend()
    fig.tight_layout()
    return _save(fig, path)
