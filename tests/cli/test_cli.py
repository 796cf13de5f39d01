"""train.py and eval.py end to end, as a user runs them (subprocesses in a temp workdir)."""

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
TINY = ["--config", "configs/transformer/tiny.yaml", "--set", "train.steps=8", "--set", "checkpoint.every_steps=4",
        "--set", "train.log_every=4", "--set", "data.max_documents=60", "--set", "data.seq_len=32"]


def _env(optimize=False):
    env = {**os.environ, "JAX_PLATFORMS": "cpu", "PYTHONPATH": str(ROOT)}
    # One device; fast compiles (see conftest) unless the run is long enough for XLA's
    # optimisations to pay for themselves.
    env["XLA_FLAGS"] = "" if optimize else "--xla_backend_optimization_level=0"
    return env


def run(script, *args, timeout=300, optimize=False):
    return subprocess.run([sys.executable, script, *args], cwd=ROOT, env=_env(optimize), capture_output=True,
                          text=True, timeout=timeout)


def test_train_resume_then_eval(tmp_path):
    work = str(tmp_path / "run")
    first = run("train.py", *TINY, "--workdir", work)
    assert first.returncode == 0, first.stderr[-3000:]
    assert "step=8" in first.stdout and "held-out perplexity" in first.stdout
    assert sorted(p.name for p in (tmp_path / "run" / "checkpoints").iterdir() if p.name.isdigit()) == ["4", "8"]

    again = run("train.py", *TINY, "--set", "train.steps=12", "--workdir", work)
    assert again.returncode == 0, again.stderr[-3000:]
    assert "resumed from step 8" in again.stdout and "step=12" in again.stdout

    ev = run("eval.py", "--workdir", work, "--tasks", "ppl")
    assert ev.returncode == 0, ev.stderr[-3000:]
    assert "perplexity" in ev.stdout
    result = json.loads((tmp_path / "run" / "eval" / "step_12.json").read_text())
    (record,) = result["results"]
    assert record["task"] == "ppl" and record["step"] == 12 and 1.0 < record["perplexity"] < 259

    older = run("eval.py", "--workdir", work, "--step", "8", "--tasks", "ppl", "--output", str(tmp_path / "o.json"))
    assert older.returncode == 0, older.stderr[-3000:]
    assert json.loads((tmp_path / "o.json").read_text())["step"] == 8


def test_sigterm_saves_and_exits(tmp_path):
    work = tmp_path / "run"
    args = [sys.executable, "train.py", "--config", "configs/transformer/tiny.yaml", "--set", "train.steps=100000",
            "--set", "checkpoint.every_steps=100000", "--set", "train.log_every=1", "--set", "data.max_documents=60",
            "--workdir", str(work)]
    proc = subprocess.Popen(args, cwd=ROOT, env=_env(), stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    lines = []
    deadline = time.time() + 240
    while time.time() < deadline:
        line = proc.stdout.readline()
        lines.append(line)
        if "step=3 " in line:
            break
    proc.send_signal(signal.SIGTERM)
    out, _ = proc.communicate(timeout=120)
    assert proc.returncode == 128 + signal.SIGTERM, "".join(lines) + out
    assert "checkpoint saved" in out
    steps = [int(p.name) for p in (work / "checkpoints").iterdir() if p.name.isdigit()]
    assert len(steps) == 1 and steps[0] >= 3


def test_bad_inputs_give_messages(tmp_path):
    bad_key = run("train.py", "--config", "configs/transformer/tiny.yaml", "--set", "train.stepz=3")
    assert bad_key.returncode == 2 and "train.steps" in bad_key.stderr
    missing = run("train.py", "--config", "configs/nope.yaml")
    assert missing.returncode == 2 and "does not exist" in missing.stderr
    no_run = run("eval.py", "--workdir", str(tmp_path))
    assert no_run.returncode == 1 and "config.yaml" in no_run.stderr
    bad_task = run("eval.py", "--workdir", str(tmp_path), "--tasks", "pppl")
    assert bad_task.returncode == 1 and "Did you mean 'ppl'" in bad_task.stderr

