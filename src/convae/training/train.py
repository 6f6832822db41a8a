"""Training a run: the entry points the CLI, :func:`convae.fit` and tests call.

``train(config)`` loads the data, fits the preprocessing on the training split,
builds the model and hands them to a :class:`~convae.training.trainer.Trainer`, which
runs the epochs. ``train(resume=run_dir)`` continues a run from its ``last``
checkpoint; with ``epochs=`` it trains a run on past its planned end. Nothing
is written until the data loads and the model builds.
"""

from __future__ import annotations

import dataclasses
import shutil
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from convae import checkpoint, presets, runtime
from convae.config import USER_FIELDS, TrainConfig, arch_of, resolve_config
from convae.data import Dataset, load_for, run_splits
from convae.data.preprocess import Normalizer, scan
from convae.errors import ConvaeError
from convae.network.model import ModelConfig, build
from convae.training import distributed, rundir
from convae.training.trainer import Prepared, Trainer


def prepare(config: TrainConfig, normalizer_state: dict | None = None, dataset: Dataset | None = None) -> Prepared:
    """Load data (unless ``dataset`` is given), split, fit preprocessing on the training split, build
    the model. Writes nothing."""
    if dataset is None:
        dataset = load_for(config)
    if config.source_stamp is not None and dataset.stamp != config.source_stamp:
        raise ConvaeError(
            f"{config.data} is not the data this run was trained on (it changed since); "
            "resuming would go on with other data: start a new run"
        )
    config.source_stamp = dataset.stamp
    n = len(dataset.x_train)
    if n < 2:
        raise ConvaeError(f"dataset '{config.data}' has {n} sample(s); at least 2 are needed to train")
    splits = run_splits(dataset, config)
    train_idx, val_idx = splits.train, splits.val
    # One pass over the training split gives its range and the normaliser's statistics: a Dataset
    # that decodes its files is decoded once before training, not once per statistic.
    stats = scan(dataset.x_train, train_idx, covariance=normalizer_state is None and config.normalize == "zca")
    if normalizer_state is not None:
        normalizer = Normalizer.from_dict(normalizer_state)
    else:
        normalizer = Normalizer(config.normalize, config.zca_epsilon).fit_statistics(stats)
    output = config.output or normalizer.output_activation
    torch.manual_seed(config.seed)  # the initial weights
    shape = dataset.sample_shape
    if config.crop is not None:
        if config.crop > min(shape[1:]):
            raise ConvaeError(
                f"--crop {config.crop} is larger than the samples of {config.data} ({'x'.join(map(str, shape[1:]))})"
            )
        shape = (shape[0],) + (config.crop,) * (len(shape) - 1)
    model = build(arch_of(config), shape, output=output, tied=config.tied, upsample=config.upsample)
    return Prepared(dataset, train_idx, val_idx, splits.test, normalizer, model, stats.low, stats.high)


def _default_out(config: TrainConfig) -> Path:
    if config.out:
        return Path(config.out)
    stem = presets.get(config.arch).name if presets.is_preset(config.arch) else "custom"
    return Path("runs") / f"{config.data.split(':')[0]}-{stem}-{time.strftime('%Y%m%d-%H%M%S')}"


@dataclass
class _Plan:
    """What ``train`` is about to do in ``run_dir``; decided, and checked, before anything is written."""

    config: TrainConfig
    run_dir: Path
    state: dict[str, Any] | None = None  # the checkpoint to go on from
    new_schedule: bool = False  # trained on past its plan: the schedule starts anew
    finish_only: bool = False  # every epoch done, the final evaluation not
    accepts: tuple[str, ...] = ("absent", "empty", "unstarted")  # the directory states it may write into


def _plan_new(config: TrainConfig) -> _Plan:
    plan = _Plan(config, _default_out(config))
    _check_state(plan)
    return plan


def _check_state(plan: _Plan) -> str:
    kind = rundir.state_of(plan.run_dir)
    if kind not in plan.accepts:
        out = plan.run_dir
        if plan.state is None and kind in ("started", "finished"):
            raise ConvaeError(f"{out} already holds a run; pass --resume {out} to continue it, or another --out")
        raise ConvaeError(f"{out} already exists and is not a convae run directory; give another --out")
    return kind


def _finished(run_dir: Path, state: dict[str, Any]) -> ConvaeError:
    return ConvaeError(
        f"{run_dir} already finished its {state['epoch']} epochs ({state['step']} steps); "
        "pass --epochs N or --max-steps N (more) to train it on"
    )


def _plan_resume(run_dir: Path, epochs: int | None, max_steps: int | None = None) -> _Plan:
    kind = rundir.state_of(run_dir)
    if kind == "absent":
        raise ConvaeError(f"{run_dir}: no such run directory")
    if kind == "unstarted":  # killed before its first checkpoint: its settings are all there is
        config = resolve_config({k: v for k, v in rundir.saved_settings(run_dir).items() if k in USER_FIELDS})
        config.epochs, config.max_steps = epochs or config.epochs, max_steps or config.max_steps
        print(f"{run_dir}: stopped before its first checkpoint; starting it from the beginning", file=sys.stderr)
        return _Plan(config, run_dir)
    if kind not in ("started", "finished"):
        raise ConvaeError(f"{run_dir}: no convae run to resume (no last.pt checkpoint)")
    state = checkpoint.load(run_dir / "last.pt")
    config = TrainConfig.from_saved(state["train_config"])
    done, accepts = state["epoch"], ("started", "finished")
    same_plan = (epochs is None or epochs == config.epochs) and (max_steps is None or max_steps == config.max_steps)
    if same_plan:
        if config.epochs > done and (config.max_steps is None or config.max_steps > state["step"]):
            return _Plan(config, run_dir, state, accepts=accepts)
        if kind == "started":
            print(f"{run_dir}: its epochs are done, its final evaluation is not; finishing it", file=sys.stderr)
            return _Plan(config, run_dir, state, finish_only=True, accepts=accepts)
        raise _finished(run_dir, state)
    if epochs is not None and epochs <= done:
        raise ConvaeError(f"{run_dir} has trained {done} epochs already; --epochs must be more than that")
    if max_steps is not None and max_steps <= state["step"]:
        raise ConvaeError(f"{run_dir} has taken {state['step']} steps already; --max-steps must be more than that")
    # Trained on past its plan (or stopped and re-planned): the schedule starts anew from here,
    # over the steps that remain, so a one-cycle or cosine run does not go on at its final, tiny rate.
    epochs = epochs or config.epochs  # a run ends at its epochs or its max_steps, whichever comes first
    if epochs <= done:
        raise _finished(run_dir, state)
    config = dataclasses.replace(
        config, epochs=epochs, max_steps=max_steps or config.max_steps, schedule_start=state["step"]
    )
    config.validate()
    print(
        f"{run_dir}: training on from step {state['step']} (epoch {done}); the {config.schedule} "
        "learning-rate schedule is planned anew over what is added",
        file=sys.stderr,
    )
    return _Plan(config, run_dir, state, new_schedule=True, accepts=accepts)


def train(
    config: TrainConfig | None = None,
    *,
    resume: str | Path | None = None,
    epochs: int | None = None,
    max_steps: int | None = None,
    quiet: bool | None = None,
    on_step: Callable[[int], None] | None = None,
    on_epoch: Callable[[dict[str, float]], None] | None = None,
    dataset: Dataset | None = None,
) -> dict[str, Any]:
    """Train a run (or resume one); returns ``{"run_dir", "epochs", "metrics", "final"}``.

    ``resume`` continues a run with its saved settings; ``epochs`` with it
    trains the run on to that many epochs (the learning-rate schedule is
    re-planned over the epochs added: a new cycle for onecycle and cosine).
    ``on_epoch`` receives each epoch's metrics. Nothing is written until the
    data loads, the model builds and the run directory is locked
    (:mod:`convae.training.rundir`); a run that fails before its first checkpoint leaves
    the directory as it found it, and one killed then can be started again.
    """
    if resume is not None:
        plan = _plan_resume(Path(resume), epochs, max_steps)
    else:
        config = config if config is not None else TrainConfig()
        config.validate()
        plan = _plan_new(config)
    config, run_dir, state = plan.config, plan.run_dir, plan.state
    if quiet is not None:
        config.quiet = quiet
    prepared = prepare(config, normalizer_state=state["normalizer"] if state else None, dataset=dataset)
    if state and ModelConfig(**state["model_config"]).to_dict() != prepared.model.config.to_dict():
        raise ConvaeError(f"{run_dir}: the checkpoint's model does not match its config")
    runtime.set_threads(config.threads)
    dist, device = distributed.setup(runtime.pick_device(config.device))
    lock = rundir.RunLock(run_dir)
    trainer = None
    events = set(run_dir.glob("events.out.tfevents.*"))  # those of earlier sessions of the run
    try:
        if dist.main:
            lock.acquire()
            rundir.clear_temporary(run_dir)
            if _check_state(plan) == "unstarted":
                if resume is None:
                    print(f"{run_dir}: a run there stopped before its first checkpoint; starting anew", file=sys.stderr)
                rundir.clear_startup_files(run_dir)
        trainer = Trainer(config, run_dir, prepared, device, dist)
        trainer.on_epoch = on_epoch
        if state is not None:
            trainer.load_state(state, plan.new_schedule)
        if dist.main:
            settings = [
                lambda: checkpoint.write_json(run_dir / "config.json", config.to_dict()),
                lambda: checkpoint.atomic_write(
                    run_dir / "preprocess.pt", lambda f: torch.save(prepared.normalizer.to_dict(), f)
                ),
            ]
            if state is None:  # a new run: its settings first, so that a kill before its first checkpoint restarts it
                for write in settings:
                    write()
            else:  # a resume rewrites them with its first checkpoint: one that fails before has changed nothing
                trainer.pending = settings
        if not plan.finish_only:
            trainer.fit(on_step)
        else:
            trainer.open_summaries()
        final = trainer.finish()
        if dist.main:
            checkpoint.write_json(run_dir / "final.json", final)
        distributed.barrier(dist)
    except BaseException:
        if trainer is not None and trainer.summaries:
            trainer.summaries.close()
        if lock.held and not (run_dir / "last.pt").exists():
            if lock.created:
                shutil.rmtree(run_dir, ignore_errors=True)
            else:
                rundir.clear_startup_files(run_dir)
        elif lock.held and trainer is not None and not trainer.saved:
            for path in set(run_dir.glob("events.out.tfevents.*")) - events:  # a resume that got nowhere
                path.unlink(missing_ok=True)
        raise
    finally:
        lock.release()
        distributed.cleanup()
    return {"run_dir": str(run_dir), "epochs": trainer.state.epoch, "metrics": trainer.state.metrics, "final": final}
