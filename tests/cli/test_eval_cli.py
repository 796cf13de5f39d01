"""eval.py's long-context tasks end to end, as a user runs them: a Transformer trained on MQAR
solves it (and an untrained one does not), and the needle / BABILong / MQAR tasks on a tiny text
checkpoint write tables, JSON and PNG plots; --compare draws two runs on one plot."""

import concurrent.futures
import json

import matplotlib.image
import numpy as np
import pytest

from tests.cli.test_cli import TINY, run
from zoo.training.metrics import read_scalars

MQAR = ["--config", "configs/synthetic/mqar_tiny.yaml", "--set", "train.log_every=400"]


def _png_ok(path):
    image = matplotlib.image.imread(path)
    assert image.ndim == 3 and image.shape[0] > 100 and image.shape[1] > 100
    assert len(np.unique(image.reshape(-1, image.shape[-1]), axis=0)) > 2  # not a blank canvas


def _eval(workdir, *args):
    ev = run("eval.py", "--workdir", str(workdir), *args)
    assert ev.returncode == 0, ev.stderr[-3000:]
    return ev


def _mqar_accuracy(workdir):
    ev = _eval(workdir, "--tasks", "mqar", "--num-samples", "64", "--batch-size", "32", "--no-plots")
    result = json.loads(next((workdir / "eval").glob("step_*.json")).read_text())
    (record,) = result["results"]
    assert record["task"] == "mqar" and record["length"] == 32 and record["queries"] == 256
    assert f"{100 * record['accuracy']:.1f}" in ev.stdout
    return record["accuracy"], record["chance"]


# The memory keeps recall (issue 9): a Titans LMM with a matrix memory (the delta rule on unit keys,
# stable with momentum 0.9), otherwise the default parametrisation (docs/fidelity.md), reaches 0.976
# held-out accuracy after 400 steps (0.904 at 200), about 40 s here; scripts/bench_recall.py holds
# the curves of every model with its defaults.
MEMORY_MQAR = ["--set", "model.name=titans_lmm", "--set", "model.memory.structure=matrix",
               "--set", "model.memory.momentum_init=0.9"]


# One model keeps the suite under 15 minutes: the transformer's recall curve is in
# scripts/results/bench_recall_cpu.json (1.000 at 800 steps), and this CLI path is model-agnostic.
@pytest.mark.parametrize("model", [MEMORY_MQAR], ids=["titans_lmm_matrix"])
def test_mqar_trained_model_recalls_untrained_does_not(tmp_path, model):
    # The trained and the untrained runs (and then their evaluations) go side by side: 2 cores.
    trained, untrained = _side_by_side(
        ["train.py", *MQAR, *model, "--workdir", str(tmp_path / "trained")],  # 400 steps
        ["train.py", *MQAR, *model, "--set", "train.steps=1", "--set", "optimizer.learning_rate=1e-9",
         "--set", "schedule.warmup_steps=0", "--workdir", str(tmp_path / "untrained")])
    assert trained.returncode == 0, trained.stderr[-3000:]
    assert untrained.returncode == 0, untrained.stderr[-3000:]
    (accuracy, chance), (accuracy0, chance0) = _side_by_side(tmp_path / "trained", tmp_path / "untrained",
                                                             job=_mqar_accuracy)
    assert accuracy >= 0.9
    assert chance0 == pytest.approx(1 / 30) and accuracy0 < 3 * chance0


def _side_by_side(*jobs, job=None):
    """Runs `job(x)` for each x on two threads (default: `run(*x, optimize=True)`); results in order."""
    job = job or (lambda args: run(*args, optimize=True))
    with concurrent.futures.ThreadPoolExecutor(max_workers=2) as pool:
        return list(pool.map(job, jobs))


def test_long_context_tasks_write_tables_json_and_plots(tmp_path):
    work = tmp_path / "text"
    train = run("train.py", *TINY, "--workdir", str(work))
    assert train.returncode == 0, train.stderr[-3000:]
    official = tmp_path / "babilong" / "1k"
    official.mkdir(parents=True)
    (official / "qa1.jsonl").write_text(json.dumps({"input": "Mary went to the garden. " * 20,
                                                    "question": "Where is Mary?", "target": "garden"}))
    ev = _eval(work, "--tasks", "s_niah_1,babilong_qa1,mqar,ppl_by_position", "--lengths", "512,1k", "--depths", "0,100",
               "--num-samples", "2", "--segment-len", "256", "--babilong-data", str(tmp_path / "babilong"))
    assert "s_niah_1: accuracy % (rows length, columns depth)" in ev.stdout
    assert "babilong_qa1" in ev.stdout and "100.0%" in ev.stderr  # the progress bar ends at 100%
    result = json.loads((work / "eval" / "step_8.json").read_text())
    records = result["results"]
    cells = sorted((r["task"], r["length"], r["depth"]) for r in records if r["task"] == "s_niah_1")
    assert cells == [("s_niah_1", n, d) for n in (512, 1024) for d in (0.0, 1.0)]
    assert sorted(r["length"] for r in records if r["task"] == "babilong_qa1") == [512, 1024]
    assert sorted(r["length"] for r in records if r["task"] == "mqar") == [512, 1024]
    by_position = [r for r in records if r["task"] == "ppl_by_position"]
    assert [r["length"] for r in by_position] == [512, 1024]
    assert by_position[1]["positions"][-1] == 1024 and len(by_position[1]["position_perplexity"]) == 11
    assert all(1.0 < p < 300 for r in by_position for p in r["position_perplexity"])
    records = [r for r in records if r["task"] != "ppl_by_position"]
    for r in records:
        assert 0.0 <= r["accuracy"] <= 1.0 and r["num_samples"] in (1, 2) and r["version"] and r["step"] == 8
    babilong = {r["length"]: r for r in records if r["task"] == "babilong_qa1"}
    assert babilong[512]["note"] == "generator-based, not leaderboard-comparable"
    assert babilong[1024]["version"].startswith("official BABILong file") and babilong[1024]["num_samples"] == 1
    assert result["settings"]["lengths"] == [512, 1024] and result["settings"]["segment_len"] == 256
    scalars = read_scalars(work / "tensorboard")  # next to the training curves
    assert scalars["eval/s_niah_1/len512/depth0.0/accuracy"][8] == next(
        r["accuracy"] for r in records if (r["task"], r["length"], r["depth"]) == ("s_niah_1", 512, 0.0))
    assert 8 in scalars["loss"]
    pngs = sorted(p.name for p in (work / "eval" / "step_8").glob("*.png"))
    assert pngs == ["accuracy_vs_length.png", "ppl_by_position.png", "s_niah_1_heatmap.png"]
    for name in pngs:
        _png_ok(work / "eval" / "step_8" / name)

    other = tmp_path / "other.json"
    _eval(work, "--tasks", "mqar", "--lengths", "64,128", "--num-samples", "2", "--output", str(other), "--no-plots",
          "--kv-cache", "turbo_mse:3", "--kv-recent", "8")  # decoding from a quantized KV cache
    assert json.loads(other.read_text())["settings"]["kv_cache"] == "turbo_mse:3"
    bad_cache = run("eval.py", "--workdir", str(work), "--kv-cache", "turbo_mse:7")
    assert bad_cache.returncode == 1 and "bits must be 1-4 for turbo_mse" in bad_cache.stderr
    cmp = run("eval.py", "--compare", str(work), str(other), "--output", str(tmp_path / "cmp"))
    assert cmp.returncode == 0, cmp.stderr[-3000:]
    assert "text@8" in cmp.stdout and "text@8'" in cmp.stdout
    for task in ("s_niah_1", "babilong_qa1", "mqar"):
        _png_ok(tmp_path / "cmp" / f"compare_{task}.png")

    partial = tmp_path / "partial.json"
    too_short = run("eval.py", "--workdir", str(work), "--tasks", "mqar,s_niah_1", "--lengths", "64",
                    "--num-samples", "2", "--output", str(partial))
    assert too_short.returncode == 1 and "use lengths >=" in too_short.stderr
    assert f"the 1 results before it are in {partial}" in too_short.stderr  # nothing lost
    kept = json.loads(partial.read_text())
    assert [r["task"] for r in kept["results"]] == ["mqar"] and "use lengths >=" in kept["incomplete"]
    no_results = run("eval.py", "--compare", str(tmp_path))
    assert no_results.returncode == 1 and "holds no eval results" in no_results.stderr
