"""The one training loop: every model, one device or many processes, fresh start or resume."""

from __future__ import annotations

import contextlib
import dataclasses
import signal
import threading
import time
from pathlib import Path

import jax
import numpy as np
from flax import nnx

from zoo.config import Config, save_config, to_dict
from zoo.data import make_data
from zoo.evaluation.perplexity import evaluate_perplexity
from zoo.registry import build_model
from zoo.training.checkpoint import Checkpointer
from zoo.training.flops import device_peak_flops, flops_per_token, mfu
from zoo.training.metrics import MetricsLogger
from zoo.training.restore import restore_run
from zoo.training.runtime import Runtime
from zoo.training.sharding import make_mesh, process_batch_rows, put_global_batch, put_process_batch


class NonFiniteLossError(RuntimeError):
    """Training produced a NaN/inf loss or gradient; the bad update was not applied."""


@dataclasses.dataclass
class TrainResult:
    step: int  # optimizer steps done in total (including earlier runs in the workdir)
    losses: dict[int, float]  # training loss of every step this run took, by step number
    heldout: dict | None  # perplexity record of the final evaluation (None if not evaluated)
    interrupted: bool  # stopped by a signal or by `stop_after` before train.steps
    resumed_from: int | None
    signum: int | None = None  # the signal that stopped the run, if any


class _StopRequest:
    """Turns SIGTERM / SIGINT into a flag the loop checks after every step."""

    def __init__(self):
        self.signum: int | None = None

    @contextlib.contextmanager
    def installed(self):
        if threading.current_thread() is not threading.main_thread():
            yield self
            return
        old = {s: signal.getsignal(s) for s in (signal.SIGTERM, signal.SIGINT)}
        for s in old:
            signal.signal(s, self._handle)
        try:
            yield self
        finally:
            for s, h in old.items():
                signal.signal(s, h)

    def _handle(self, signum, frame):
        if self.signum is not None:  # second signal: stop now
            raise KeyboardInterrupt
        self.signum = signum


def train(cfg: Config, workdir: str | Path, *, stop_after: int | None = None,
          data_cache_dir: str | Path | None = None, devices: list | None = None,
          stream=None) -> TrainResult:
    """Trains `cfg` in `workdir`, resuming from its newest checkpoint if there is one.

    stop_after: take at most this many steps in this call (then save and return), as if the
    run had been interrupted. devices: the devices of the mesh (default: all of them).
    """
    workdir = Path(workdir)
    is_main = jax.process_index() == 0
    if is_main:
        workdir.mkdir(parents=True, exist_ok=True)
    logger = MetricsLogger(workdir, enabled=is_main, show_progress=cfg.train.progress_bar, stream=stream)

    mesh = make_mesh(cfg.mesh, devices)
    rt = Runtime(cfg, mesh)
    micro = cfg.data.batch_size // cfg.train.grad_accum
    rt.check_batch(micro, "data.batch_size / train.grad_accum")
    rt.check_batch(cfg.eval.batch_size, "eval.batch_size")

    data = make_data(cfg, cache_dir=data_cache_dir)
    my_rows = process_batch_rows(mesh, cfg.data.batch_size, cfg.train.grad_accum)  # this process's share
    if is_main:
        save_config(cfg, workdir / "config.yaml")
        data.tokenizer.save(workdir)

    ckpt = Checkpointer(workdir / "checkpoints", cfg.checkpoint)
    resumed_from = ckpt.latest_step()
    initialised = ""
    if resumed_from is None and cfg.train.init_from:
        source = restore_run(cfg.train.init_from, cfg.train.init_step or None, devices=list(mesh.devices.flat))
        state = rt.state_from_params(source.state.params)
        initialised = f" initialised from {cfg.train.init_from} step {source.step}"
    elif resumed_from is None:
        state = rt.init_state()
    else:
        state, meta = ckpt.restore(rt.abstract_state(), resumed_from)
        data.train.set_state(meta["data_state"])
    step = int(jax.device_get(state.step))
    model_flops = flops_per_token(nnx.eval_shape(lambda: build_model(cfg.model, rngs=nnx.Rngs(0))), cfg.data.seq_len)
    peak = cfg.train.peak_flops or device_peak_flops(mesh.devices.flat[0])
    trained = f" trainable={rt.num_trainable():,} ({cfg.train.trainable!r})" if cfg.train.trainable else ""
    logger.message(f"memzoo: model={cfg.model.name} params={rt.num_params():,}{trained} devices={mesh.devices.size} "
                   f"mesh={dict(mesh.shape)} flops/token={model_flops:.3g} workdir={workdir}"
                   + (f" resumed from step {resumed_from}" if resumed_from is not None else "") + initialised)

    tokens_per_step = cfg.data.batch_size * cfg.data.seq_len
    losses: dict[int, float] = {}
    pending: list[tuple[int, dict]] = []
    last_good_ckpt = resumed_from
    window_start, window_steps = time.time(), 0

    def meta() -> dict:
        return {"step": step, "data_state": data.train.get_state(), "config": to_dict(cfg)}

    def flush(log: bool) -> None:
        """Fetches pending step metrics; stops the run on the first non-finite one."""
        nonlocal window_start, window_steps
        if not pending:
            return
        fetched = jax.device_get([m for _, m in pending])
        for (s, _), m in zip(pending, fetched):
            if not m["finite"]:
                ckpt.wait()
                raise NonFiniteLossError(
                    f"loss or gradients became non-finite at step {s} (loss={float(m['loss'])}, grad_norm="
                    f"{float(m['grad_norm'])}); that update was skipped and training stopped. The newest "
                    f"good checkpoint is step {last_good_ckpt} in {workdir / 'checkpoints'}. Try a lower "
                    "optimizer.learning_rate, a longer schedule.warmup_steps or optimizer.grad_clip=1.0")
            losses[s] = float(m["loss"])
        if log:
            elapsed = max(time.time() - window_start, 1e-9)
            last = fetched[-1]
            tokens_per_s = window_steps * tokens_per_step / elapsed
            record = {"step": pending[-1][0], "loss": float(np.mean([float(m["loss"]) for m in fetched])),
                      "accuracy": float(last["accuracy"]), "grad_norm": float(last["grad_norm"]),
                      "learning_rate": float(last["learning_rate"]), "tokens_per_s": tokens_per_s,
                      "step_time_s": elapsed / max(window_steps, 1)}
            utilisation = mfu(model_flops, tokens_per_s, mesh.devices.size, peak)
            if utilisation is not None:
                record["mfu"] = utilisation
            logger.log(record, total_steps=cfg.train.steps)
            window_start, window_steps = time.time(), 0
        pending.clear()

    def evaluate() -> dict:
        batches = data.heldout_batches(cfg.eval.batch_size, cfg.eval.max_batches)
        result = evaluate_perplexity(rt.eval_step, state.params, batches, lambda b: put_global_batch(b, mesh))
        logger.log({"step": step, "heldout_loss": result["loss"], "heldout_perplexity": result["perplexity"],
                    "heldout_accuracy": result["accuracy"], "heldout_tokens": result["tokens"]})
        return result

    stopper = _StopRequest()
    taken = 0
    heldout = None
    with stopper.installed(), contextlib.closing(logger):
        while step < cfg.train.steps:
            batch = put_process_batch(data.train.next_rows(my_rows), my_rows, mesh, cfg.data.batch_size,
                                      cfg.train.grad_accum)
            state, metrics = rt.train_step(state, batch)
            step += 1
            taken += 1
            window_steps += 1
            pending.append((step, metrics))
            finished = step == cfg.train.steps
            stop = stopper.signum is not None or (stop_after is not None and taken >= stop_after)
            if step % cfg.train.log_every == 0 or finished or stop:
                flush(log=True)
            if step % cfg.checkpoint.every_steps == 0 or finished or stop:
                flush(log=False)
                ckpt.save(step, state, meta())
                last_good_ckpt = step
            if cfg.train.eval_every and step % cfg.train.eval_every == 0 and not finished:
                evaluate()
            if stop:
                break
        flush(log=False)
        interrupted = step < cfg.train.steps
        if interrupted:
            why = f"signal {stopper.signum}" if stopper.signum is not None else f"stop_after={stop_after}"
            logger.message(f"stopped at step {step} ({why}); checkpoint saved, rerun the same command to resume")
        else:
            heldout = evaluate()
            logger.message(f"done: step {step}, held-out perplexity {heldout['perplexity']:.3f} "
                           f"(loss {heldout['loss']:.4f} over {heldout['tokens']} tokens)")
        ckpt.close()
    return TrainResult(step=step, losses=losses, heldout=heldout, interrupted=interrupted,
                       resumed_from=resumed_from, signum=stopper.signum)
