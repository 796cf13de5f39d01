#!/usr/bin/env python
"""MQAR recall: held-out accuracy vs training step for every registered model, through the
project's own training loop (`zoo.training.train`), several seeds. Prints a table, writes JSON
and a PNG of accuracy vs step (median over seeds, min-max band).

Settings (both start from configs/synthetic/mqar_tiny.yaml and change only what is listed):
    tiny   the mqar_tiny setting: 32 tokens, 4 key-value pairs, vocab 64, d_model 64, 2 layers
    hard   64 tokens, 8 key-value pairs, vocab 128 (longer sequences, more pairs to keep apart;
           the larger vocabulary keeps the 8 keys distinct from the filler: at vocab 64 even the
           Transformer stays at 0.09 after 2000 steps, at 128 it reaches 0.99 by step 400)
Models with sliding-window attention next to the memory get model.sliding_window=4 in every
setting, so a query can only be answered by the memory (MODEL_OVERRIDES); titans_mac runs as
configured (segment attention over memory.chunk_size = 16 tokens, so the queries of the second
segment need the memory). PolySketchFormer and MS-SSM take no short conv on attention inputs, so
they run with model.attn_conv_width=0 (their own token mixing only).

    python scripts/bench_recall.py --jobs 2 --output scripts/results/bench_recall_cpu.json
    python scripts/bench_recall.py --models titans_lmm,gated_deltanet --settings tiny --seeds 0
    python scripts/bench_recall.py --models lattice --settings tiny --set model.memory.retention=slot_norm_gla

Each run is a subprocess (`--run-one`), so `--jobs` runs go side by side (single-threaded XLA
each); `--resume` keeps the runs an existing --output already holds.
"""

from __future__ import annotations

import argparse
import concurrent.futures
import dataclasses
import json
import os
import platform
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

BASE_CONFIG = "configs/synthetic/mqar_tiny.yaml"
SETTINGS = {
    "tiny": (),
    "hard": ("data.seq_len=64", "data.mqar.num_pairs=8", "model.vocab_size=128"),
}
MODEL_OVERRIDES = {"titans_mag": ("model.sliding_window=4",), "titans_mal": ("model.sliding_window=4",),
                   # no short conv on attention inputs (they take none): their own mixing only
                   "polysketchformer": ("model.attn_conv_width=0",), "msssm": ("model.attn_conv_width=0",)}


@dataclasses.dataclass(frozen=True)
class Run:
    model: str
    setting: str
    seed: int
    steps: int
    eval_every: int
    extra: tuple[str, ...] = ()  # --set overrides: a variant of the model

    def overrides(self) -> list[str]:
        return [f"model.name={self.model}", *SETTINGS[self.setting], *MODEL_OVERRIDES.get(self.model, ()),
                *self.extra, f"train.steps={self.steps}", f"train.eval_every={self.eval_every}", f"train.seed={self.seed}",
                f"data.seed={self.seed}", f"train.log_every={self.steps}", "train.progress_bar=false",
                f"checkpoint.every_steps={self.steps}", "checkpoint.async_save=false"]

    def key(self) -> tuple:
        return (self.model, self.setting, self.seed, self.steps, self.eval_every, self.extra)

    @classmethod
    def of(cls, record: dict) -> "Run":
        """The run a JSON record (or a --run-one argument) describes."""
        return cls(record["model"], record["setting"], record["seed"], record["steps"], record["eval_every"],
                   tuple(record.get("extra", ())))


def label(record: dict) -> str:
    """The model's name, with its --set overrides when it ran with any."""
    return record["model"] + (f" [{' '.join(record['extra'])}]" if record.get("extra") else "")


def run_one(run: Run) -> dict:
    """Trains one model in a temporary workdir; returns its held-out accuracy curve."""
    import io

    from zoo.config import load_config
    from zoo.training import train

    cfg = load_config(ROOT / BASE_CONFIG, overrides=run.overrides())
    start = time.time()
    with tempfile.TemporaryDirectory(prefix="bench_recall_") as workdir:
        train(cfg, workdir, stream=io.StringIO())
        records = [json.loads(line) for line in (Path(workdir) / "metrics.jsonl").read_text().splitlines()]
    curve = {int(r["step"]): r["heldout_accuracy"] for r in records if "heldout_accuracy" in r}
    return {**dataclasses.asdict(run), "curve": curve, "seconds": round(time.time() - start, 1)}


def run_in_subprocess(run: Run, single_thread: bool) -> dict:
    env = dict(os.environ)
    if single_thread:
        env["XLA_FLAGS"] = (env.get("XLA_FLAGS", "") + " --xla_cpu_multi_thread_eigen=false "
                            "intra_op_parallelism_threads=1").strip()
    proc = subprocess.run([sys.executable, __file__, "--run-one", json.dumps(dataclasses.asdict(run))],
                          cwd=ROOT, env=env, capture_output=True, text=True)
    if proc.returncode != 0:
        raise RuntimeError(f"{run} failed:\n{proc.stderr[-3000:]}")
    result = json.loads(proc.stdout.strip().splitlines()[-1])
    result["curve"] = {int(k): v for k, v in result["curve"].items()}
    return result


def summarize(runs: list[dict]) -> list[dict]:
    """Median (and per-seed) held-out accuracy of each model and setting at every eval step."""
    groups: dict[tuple, list[dict]] = {}
    for r in runs:
        groups.setdefault((label(r), r["setting"]), []).append(r)
    rows = []
    for (model, setting), group in sorted(groups.items()):
        steps = sorted(set.intersection(*(set(r["curve"]) for r in group)))
        rows.append({"model": model, "setting": setting, "seeds": sorted(r["seed"] for r in group),
                     "median": {s: statistics.median(r["curve"][s] for r in group) for s in steps},
                     "final": [r["curve"][steps[-1]] for r in sorted(group, key=lambda r: r["seed"])],
                     "seconds_per_run": round(statistics.mean(r["seconds"] for r in group), 1)})
    return rows


def print_table(rows: list[dict]) -> None:
    marks = sorted({s for r in rows for s in r["median"]})
    shown = [s for s in marks if s in (200, 400, 800) or s == marks[-1]]
    print("| model | setting | " + " | ".join(f"median @ {s}" for s in shown) + " | per seed (last) | s/run |")
    print("|---|---|" + "---|" * len(shown) + "---|---|")
    for r in rows:
        cells = " | ".join(f"{r['median'][s]:.3f}" if s in r["median"] else "—" for s in shown)
        seeds = ", ".join(f"{a:.3f}" for a in r["final"])
        print(f"| {r['model']} | {r['setting']} | {cells} | {seeds} | {r['seconds_per_run']:.0f} |")


def plot(runs: list[dict], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    settings = sorted({r["setting"] for r in runs}, key=list(SETTINGS).index)
    fig, axes = plt.subplots(1, len(settings), figsize=(6 * len(settings), 4.2), squeeze=False)
    for ax, setting in zip(axes[0], settings):
        for model in sorted({label(r) for r in runs if r["setting"] == setting}):
            group = [r["curve"] for r in runs if r["setting"] == setting and label(r) == model]
            steps = sorted(set.intersection(*(set(c) for c in group)))
            acc = [[c[s] for c in group] for s in steps]
            line, = ax.plot(steps, [statistics.median(a) for a in acc], marker="o", ms=3, label=model)
            ax.fill_between(steps, [min(a) for a in acc], [max(a) for a in acc], color=line.get_color(), alpha=0.15)
        ax.set_title(f"MQAR '{setting}': median of seeds, min-max band")
        ax.set_xlabel("training step")
        ax.set_ylabel("held-out query accuracy")
        ax.set_ylim(0, 1.02)
        ax.grid(alpha=0.3)
        ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--models", default="all", help="comma-separated registry names, or 'all'")
    p.add_argument("--settings", default=",".join(SETTINGS))
    p.add_argument("--seeds", default="0,1,2")
    p.add_argument("--steps", type=int, default=800)
    p.add_argument("--eval-every", type=int, default=100)
    p.add_argument("--jobs", type=int, default=1, help="runs side by side (each single-threaded when > 1)")
    p.add_argument("--output", default=None, help="JSON path (saved after every run)")
    p.add_argument("--plot", default=None, help="PNG path (default: the --output path with .png)")
    p.add_argument("--resume", action="store_true", help="keep the runs --output already holds")
    p.add_argument("--set", action="append", default=[], metavar="SECTION.FIELD=VALUE",
                   help="override one config value in every run (repeatable, as train.py's), a variant of the "
                        "models (e.g. model.memory.retention=slot_norm_gla); recorded with each run and in its label")
    p.add_argument("--run-one", default=None, help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    if args.run_one:
        print(json.dumps(run_one(Run.of(json.loads(args.run_one)))))
        return 0

    import jax

    from zoo import registry

    names = sorted(registry.models()) if args.models == "all" else args.models.split(",")
    unknown = [n for n in names if n not in registry.models()]
    settings = args.settings.split(",")
    bad = [s for s in settings if s not in SETTINGS]
    if unknown or bad:
        p.error(f"unknown models {unknown} or settings {bad}; models: {', '.join(sorted(registry.models()))}; "
                f"settings: {', '.join(SETTINGS)}")
    planned = [Run(m, s, int(seed), args.steps, args.eval_every, tuple(args.set))
               for s in settings for m in names for seed in args.seeds.split(",")]
    from zoo.config import ConfigError, load_config

    for run in {r.model: r for r in planned}.values():  # a bad --set fails here, not in every subprocess
        try:
            load_config(ROOT / BASE_CONFIG, overrides=run.overrides())
        except (ConfigError, ValueError) as e:
            p.error(f"{run.model} with --set {' '.join(args.set)}: {e}")
    out = Path(args.output) if args.output else None
    done: list[dict] = []
    if args.resume and out is not None and out.is_file():  # every run it holds stays, planned or not
        done = json.loads(out.read_text())["runs"]
        for r in done:
            r["curve"] = {int(k): v for k, v in r["curve"].items()}
    have = {Run.of(r).key() for r in done}
    todo = [r for r in planned if r.key() not in have]
    print(f"{len(todo)} runs to do ({len(done)} kept), {args.jobs} at a time", flush=True)

    def save() -> None:
        if out is None:
            return
        out.parent.mkdir(parents=True, exist_ok=True)
        out.write_text(json.dumps({
            "device": str(jax.devices()[0].device_kind), "platform": platform.platform(), "jax": jax.__version__,
            "base_config": BASE_CONFIG, "settings": {k: list(v) for k, v in SETTINGS.items()},
            "model_overrides": {k: list(v) for k, v in MODEL_OVERRIDES.items()}, "summary": summarize(done), "runs": done},
            indent=1))

    with concurrent.futures.ThreadPoolExecutor(max_workers=args.jobs) as pool:
        futures = {pool.submit(run_in_subprocess, r, args.jobs > 1): r for r in todo}
        failed = []
        for future in concurrent.futures.as_completed(futures):
            try:
                result = future.result()
            except RuntimeError as e:  # report it, keep the other runs
                failed.append(futures[future])
                print(e, file=sys.stderr, flush=True)
                continue
            done.append(result)
            last = result["curve"][max(result["curve"])]
            print(f"{label(result):16s} {result['setting']:5s} seed {result['seed']}: {last:.3f} after "
                  f"{max(result['curve'])} steps ({result['seconds']:.0f} s)", flush=True)
            save()
    done.sort(key=lambda r: (r["setting"], r["model"], r["seed"]))
    save()
    print_table(summarize(done))
    if failed:
        print(f"{len(failed)} runs failed: {failed}", file=sys.stderr)
    if done and (args.plot or out):
        path = Path(args.plot) if args.plot else out.with_suffix(".png")
        plot(done, path)
        print(f"wrote {path}" + (f" and {out}" if out else ""))
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
