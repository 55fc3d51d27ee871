"""The one training entry point: `run(spec, out_dir)` trains, evaluates, checkpoints, resumes, selects."""
from __future__ import annotations

import contextlib
import os
import time
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any, Iterator

import torch

from . import checkpoint as ckpt
from .backbones.base import BACKBONE_FILE, BACKBONE_META
from .config import Resolved, RunSpec, resolve
from .errors import ConfigError, Interrupted, RunFailedError
from .fit import selected_train_metrics
from .locks import job_lock
from .provenance import provenance
from .results import (CHECKPOINT, CONFIG, FINAL, LOCK, METRICS, atomic_torch_save, atomic_write_json, partial_write,
                      read_json, rewrite_jsonl, sync_tree)
from .loggers import check_loggers, with_loggers
from .saliency import selected_rho_spur
from .selection import select_all, selected_model_path
from .trainer import Reporter, Trainer, assemble, build, evaluate


@dataclass
class RunResult:
    out_dir: Path
    final: dict[str, Any]
    resumed_from_epoch: int | None = None
    already_finished: bool = False


def pick_device(name: str) -> torch.device:
    """'auto' is CUDA when present, else CPU; asking for CUDA without one is an error."""
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name.startswith("cuda") and not torch.cuda.is_available():
        raise ConfigError("--device cuda was asked for but torch sees no CUDA device; use --device cpu or auto")
    try:
        return torch.device(name)
    except RuntimeError:
        raise ConfigError(f"unknown device {name!r}; use auto, cpu, cuda or cuda:N") from None


def set_threads(device: torch.device, threads: int, modality: str) -> None:
    """`threads` > 0 sets torch's CPU threads. By default tabular models on CPU use one thread: their ops
    are too small to split, and torch's spinning worker threads slow them many times over on a busy
    machine; image and text models keep torch's default (all cores)."""
    if threads > 0:
        torch.set_num_threads(threads)
    elif device.type == "cpu" and modality == "tabular":
        torch.set_num_threads(1)


@contextlib.contextmanager
def deterministic_mode(on: bool) -> Iterator[None]:
    """torch's deterministic algorithms for the run when `on` (train.deterministic), restored after.

    cuBLAS needs CUBLAS_WORKSPACE_CONFIG set before its first use for deterministic matmuls; it is set
    only if the user has not set it."""
    if not on:
        yield
        return
    os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", ":4096:8")
    before = (torch.are_deterministic_algorithms_enabled(), torch.backends.cudnn.benchmark)
    torch.use_deterministic_algorithms(True)
    torch.backends.cudnn.benchmark = False
    try:
        yield
    finally:
        torch.use_deterministic_algorithms(before[0])
        torch.backends.cudnn.benchmark = before[1]


def default_out_dir(r: Resolved) -> Path:
    method = "+".join([r.spec.algorithm, *r.spec.aux])
    return Path("runs") / r.spec.data / f"{method}-{r.backbone}-s{r.spec.seed}-{r.digest()}"


def _check_out_dir(out: Path, r: Resolved) -> str:
    """'fresh', 'resume' or 'done'; a file, or a directory holding something else, is an error."""
    for path in (out, *out.parents):
        if path.exists() and not path.is_dir():
            where = "is a file" if path == out else f"is inside {path}, which is a file"
            raise ConfigError(f"--out {out} {where}; choose a directory path for the run")
    if not out.exists():
        return "fresh"
    if (out / CONFIG).exists():
        try:
            identity = read_json(out / CONFIG).get("identity")
        except (ValueError, OSError, AttributeError):
            raise ConfigError(f"{out}/{CONFIG} is damaged; choose another --out or delete {out}") from None
        if identity != r.identity():
            raise ConfigError(f"{out} holds a different run (its config.json differs); choose another --out")
        if (out / FINAL).exists():
            return "done"
        return "resume" if (out / CHECKPOINT).exists() else "fresh"
    # The lock file comes before config.json; a process killed while writing config.json leaves a partial write
    if any(p.name != LOCK and not partial_write(p.name) for p in out.iterdir()):
        raise ConfigError(f"{out} exists and is not a run directory; choose another --out")
    return "fresh"


def _make_out_dir(out: Path, r: Resolved, device: torch.device, notes: dict[str, Any]) -> None:
    try:
        out.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise ConfigError(f"cannot create the run directory {out} ({exc.strerror}); choose another --out") from None
    for leftover in [p for p in out.iterdir() if partial_write(p.name)]:  # an earlier, killed start's
        leftover.unlink(missing_ok=True)
    atomic_write_json(out / CONFIG, {**_config_json(r, device), "notes": notes})
    rewrite_jsonl(out / METRICS, [])


def _config_json(r: Resolved, device: torch.device) -> dict[str, Any]:
    splits = r.dataset.load()
    return {
        "identity": r.identity(),
        "spec": r.spec.to_json(),
        "backbone": r.backbone,
        "objectives": r.objectives,
        "hparams": r.hparams_json(),
        "components": {k: {"name": p.name, "dist": p.dist, "version": p.version} for k, p in r.providers().items()},
        "algorithm_flags": r.use.flags(),
        "data": {"name": r.info.name, "fingerprint": r.dataset.fingerprint(), "tasks": r.info.tasks,
                 "group_names": list(r.info.group_names), "sizes": {k: len(v) for k, v in splits.items()},
                 "eval_group_names": list(r.info.eval_group_names),
                 "train_eval_group_counts": list(r.info.train_eval_group_counts),
                 "train_group_counts": list(r.info.train_group_counts),
                 "environment_names": list(r.info.environment_names),
                 "train_env_counts": list(r.info.train_env_counts)},
        "provenance": provenance(device),
    }


def _notes(trainer: Trainer) -> dict[str, Any]:
    """What the built model says about itself that its hparams do not (e.g. where an MLM head came from)."""
    notes = {f"objective:{name}": obj.notes() for name, obj in trainer.algo.model.objectives.items()
             if hasattr(obj, "notes")}
    if hasattr(trainer.r.dataset, "notes"):
        notes["dataset"] = trainer.r.dataset.notes()
    return notes


def _interrupted(trainer: Trainer, out: Path) -> Interrupted:
    """What Ctrl-C left behind, and the command that continues (epochs counted from 1, as the progress bar)."""
    if not (out / CHECKPOINT).exists():
        return Interrupted(f"interrupted before the first epoch was checkpointed; the same command starts the "
                           f"run again in {out}")
    done = int(ckpt.load(out / CHECKPOINT)["epoch"]) + 1
    total = trainer.t.epochs
    where = ("after training, before final.json was written" if trainer.stopped or trainer.epoch >= total
             else f"during epoch {trainer.epoch + 1}/{total}")
    return Interrupted(f"interrupted {where}; {out} holds a checkpoint after epoch {done}/{total}: the same "
                       f"command resumes from there (or: robustbench-mtl run --resume --out {out})")


def _final(trainer: Trainer, resumed: int | None, seconds: float) -> dict[str, Any]:
    records, t = trainer.records, trainer.t
    epochs_run = sum("phase" not in x for x in records)
    selections = select_all(records, t.patience, trainer.out, trainer.algo.selectable)
    # rho_spur of each protocol's selected model, into its entry (datasets that declare spurious regions only)
    saliency = selected_rho_spur(trainer.algo, trainer.r.dataset, trainer.test, trainer.out, selections,
                                 t.eval_batch_size)
    # Training-subset metrics feed the multi-task fit table; elsewhere nothing reads them, so no run pays for them
    fit = selected_train_metrics(trainer.algo.model, trainer.train, trainer.out, selections,
                                 lambda split: evaluate(trainer.algo, split, "train", trainer.r)
                                 ) if len(trainer.r.info.tasks) > 1 else None
    return {"status": "finished", "epochs_run": epochs_run,
            "stopped_early": trainer.stopped and epochs_run < t.epochs,  # a stop on the last epoch ends nothing early
            "selection_patience": t.patience, "resumed_from_epoch": resumed,
            "time_s_this_session": seconds,
            "selections": selections, **({"train_metrics": fit} if fit is not None else {}),
            **({"saliency": saliency} if saliency is not None else {})}


def run(spec: RunSpec, out_dir: Path | None = None, reporter: Reporter | None = None,
        locked: bool = False) -> RunResult:
    """Train and evaluate one configuration into `out_dir`; resume if it holds a checkpoint.

    While it trains, the process holds the run directory's lock (locks.job_lock; `locked`: the caller holds
    it already, as a sweep job does), so a second process asked for the same run refuses with one line
    instead of training it twice, and `sweep status` sees it as running. Ctrl-C raises `Interrupted` (a
    one-line message saying what is checkpointed and how to resume); files are written atomically, so
    nothing is left half-written.
    """
    check_loggers(spec.log)
    r = resolve(spec)
    device = pick_device(spec.device)
    set_threads(device, spec.threads, r.info.modality)
    out = Path(out_dir) if out_dir is not None else default_out_dir(r)
    if _check_out_dir(out, r) == "done":
        return RunResult(out, read_json(out / FINAL), already_finished=True)
    with contextlib.nullcontext() if locked else _exclusive(out):
        state = _check_out_dir(out, r)  # again: another process may have finished it before the lock was ours
        if state == "done":
            return RunResult(out, read_json(out / FINAL), already_finished=True)
        reporter = with_loggers(reporter or Reporter(), out, spec.log)
        with deterministic_mode(r.hparams["train"].deterministic):
            return _train(r, out, device, reporter, state)


@contextlib.contextmanager
def _exclusive(out: Path) -> Iterator[None]:
    """Hold `out`'s lock, or refuse with one line when another process holds it. A directory this call made
    that holds no run when it ends (a bad input found while loading) is removed again: nothing is left."""
    made = not out.exists()
    with contextlib.ExitStack() as stack:
        try:
            mine = stack.enter_context(job_lock(out))
        except OSError as exc:
            raise ConfigError(f"cannot create the run directory {out} ({exc.strerror}); choose another --out") from None
        if not mine:
            raise ConfigError(f"{out} is being trained by another process now (it holds {out / LOCK}); wait for "
                              f"it to finish, or choose another --out")
        if made:  # only by the lock's holder, before it is released (last in, first out)
            stack.callback(_remove_if_no_run, out)
        yield


def _remove_if_no_run(out: Path) -> None:
    if not (out / CONFIG).exists():
        with contextlib.suppress(OSError):
            (out / LOCK).unlink()
            out.rmdir()


def _train(r: Resolved, out: Path, device: torch.device, reporter: Reporter, state: str) -> RunResult:
    trainer = Trainer(r, out, device, reporter)
    resumed = None
    t0 = time.perf_counter()
    try:
        if state == "resume":
            resumed = trainer.restore()
            reporter.resumed(resumed, out)
        else:
            _make_out_dir(out, r, device, _notes(trainer))
            trainer.setup()
        trainer.loop()
        trainer.after_training()
        final = _final(trainer, resumed, time.perf_counter() - t0)
    except RunFailedError as exc:
        atomic_write_json(out / "failed.json", {"status": "failed", "error": str(exc), "epoch": trainer.epoch})
        raise RunFailedError(f"run failed at epoch {trainer.epoch}: {exc} (details in {out / 'failed.json'})") from None
    except KeyboardInterrupt:
        raise _interrupted(trainer, out) from None
    finally:
        reporter.close()
    with contextlib.suppress(FileNotFoundError):
        (out / "failed.json").unlink()
    sync_tree(out)  # what final.json vouches for reaches the disk first (per-epoch writes skip fsync)
    atomic_write_json(out / FINAL, final)
    return RunResult(out, final, resumed_from_epoch=resumed)


def pretrain(spec: RunSpec, out_dir: Path, reporter: Reporter | None = None) -> Path:
    """Task-adaptive pretraining: a `tapt` run of `spec` (its --aux objectives only, no labels, no early
    stopping unless asked for) into `out_dir`, then the last epoch's backbone saved there as backbone.pt
    with backbone.json (what it is and how it was made). Any run starts from it with
    `--set backbone.init=<out_dir>`. Returns the path of backbone.pt."""
    if spec.algorithm != "tapt":
        spec = replace(spec, algorithm="tapt")
    # Untrained heads make val metrics meaningless, so by default nothing stops early on them.
    spec = replace(spec, overrides=("train.patience=0", *spec.overrides))
    result = run(spec, out_dir, reporter)
    out = result.out_dir
    state = ckpt.load(out / CHECKPOINT)["algorithm"]
    weights = {k[len("model.backbone."):]: v for k, v in state.items() if k.startswith("model.backbone.")}
    config = read_json(out / CONFIG)
    atomic_torch_save(weights, out / BACKBONE_FILE)
    atomic_write_json(out / BACKBONE_META, {
        "backbone": config["backbone"], "class": _backbone_class(config), "hparams": config["hparams"]["backbone"],
        "pretrained_on": config["spec"]["data"], "objectives": config["objectives"],
        "epochs": result.final["epochs_run"], "run": config["identity"]})
    return out / BACKBONE_FILE


def _backbone_class(config: dict[str, Any]) -> str:
    from .registry import BACKBONES

    cls = BACKBONES.get(config["backbone"])
    return f"{cls.__module__}.{cls.__qualname__}"


__all__ = ["run", "pretrain", "RunResult", "Reporter", "RunSpec", "assemble", "build", "evaluate", "pick_device",
           "selected_model_path"]
