"""The one training entry point: `run(spec, out_dir)` trains, evaluates, checkpoints, resumes, selects."""
from __future__ import annotations

import contextlib
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from . import checkpoint as ckpt
from .algorithms.base import Algorithm
from .config import Resolved, RunSpec, resolve
from .data.base import DataInfo, TensorSplit
from .errors import ConfigError, RunFailedError
from .loaders import AuxStream, epoch_batches, steps_per_epoch
from .metrics import split_metrics
from .model import Model
from .objectives.base import AuxiliaryTask
from .provenance import provenance
from .results import CHECKPOINT, CONFIG, FINAL, METRICS, atomic_write_json, read_json, read_jsonl, rewrite_jsonl
from .selection import select_all, selected_model_path, save_selected_models


class Reporter:
    """Progress callbacks; the CLI draws a progress bar, library use stays silent."""

    def start(self, epochs: int, steps: int, start_epoch: int) -> None: ...
    def step(self, epoch: int, step: int, losses: dict[str, float]) -> None: ...
    def epoch_end(self, epoch: int, record: dict[str, Any]) -> None: ...
    def close(self) -> None: ...


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


def default_out_dir(r: Resolved) -> Path:
    method = "+".join([r.spec.algorithm, *r.spec.aux])
    return Path("runs") / r.spec.data / f"{method}-{r.backbone}-s{r.spec.seed}-{r.digest()}"


def _check_out_dir(out: Path, r: Resolved) -> str:
    """'fresh', 'resume' or 'done'; a directory holding some other run is an error."""
    if not out.exists():
        return "fresh"
    if (out / CONFIG).exists():
        if read_json(out / CONFIG).get("identity") != r.identity():
            raise ConfigError(f"{out} holds a different run (its config.json differs); choose another --out")
        if (out / FINAL).exists():
            return "done"
        return "resume" if (out / CHECKPOINT).exists() else "fresh"
    if any(out.iterdir()):
        raise ConfigError(f"{out} exists and is not a run directory; choose another --out")
    return "fresh"


def assemble(classes: dict[str, type], hparams: dict[str, Any], objectives: list[str], info: DataInfo, seed: int,
             total_steps: int, device: torch.device = torch.device("cpu")) -> Algorithm:
    """Backbone, objectives, heads and algorithm from component classes and hparams (keys as in `Resolved`),
    seeded so the same inputs build the same weights. `robustbench_mtl.testing` builds through here too."""
    ckpt.seed_everything(seed)
    backbone = classes["backbone"](hparams["backbone"], info)
    objs = {o: classes[f"objective:{o}"](hparams[o], backbone, info) for o in objectives}
    model = Model(backbone, info.tasks, objs, hparams["model"].head_norm)
    return classes["algorithm"](model.to(device), hparams["algorithm"], hparams["train"], info, total_steps)


def build(r: Resolved, device: torch.device, total_steps: int) -> Algorithm:
    """The run's algorithm on its device, with bf16 autocast on CUDA (or when asked for)."""
    algo = assemble(r.classes, r.hparams, r.objectives, r.info, r.spec.seed, total_steps, device)
    precision = r.hparams["train"].precision
    if precision == "bf16" or (precision == "auto" and device.type == "cuda"):
        algo.autocast = torch.autocast(device.type, dtype=torch.bfloat16)
    return algo


@torch.no_grad()
def evaluate(algo: Algorithm, split: TensorSplit, name: str, r: Resolved) -> dict[str, float]:
    """Predictions over a whole split, then accuracy metrics overall, per group and per class."""
    bs = r.hparams["train"].eval_batch_size
    logits: dict[str, list[torch.Tensor]] = {t: [] for t in r.info.tasks}
    for start in range(0, len(split), bs):
        out = algo.predict(split.inputs(slice(start, start + bs)))
        for t in logits:
            logits[t].append(out[t])
    full = {t: torch.cat(v) for t, v in logits.items()}
    loss = sum(torch.nn.functional.cross_entropy(full[t], split.y[t].clamp_min(0), reduction="none")
               .mul(split.y[t] >= 0).mean() for t in full)
    preds = {t: v.argmax(1) for t, v in full.items()}
    return split_metrics(name, preds, split.y, split.g, r.info, float(loss))


class _Trainer:
    """The state of one training run between epochs."""

    def __init__(self, r: Resolved, out: Path, device: torch.device, reporter: Reporter) -> None:
        self.r, self.out, self.device, self.reporter = r, out, device, reporter
        self.t = r.hparams["train"]
        splits = {k: v.to(device) for k, v in r.dataset.load().items()}
        algo_cls = r.classes["algorithm"]
        train = splits["train"]
        if not algo_cls.uses_train_groups:  # the algorithm never sees a real training group id
            train = TensorSplit(train.x, train.y, torch.full_like(train.g, -1), train.e)
        self.train, self.val, self.test = train, splits["val"], splits["test"]
        self.steps = steps_per_epoch(len(train), self.t.batch_size)
        self.algo = build(r, device, self.t.epochs * self.steps)
        has_aux = any(isinstance(o, AuxiliaryTask) for o in self.algo.model.objectives.values())
        self.aux = AuxStream(train, self.t.aux_batch_size or self.t.batch_size, r.spec.seed) if has_aux else None
        self.epoch, self.global_step = 0, 0
        self.records: list[dict[str, Any]] = []
        self.stopper = {"best_wg": float("-inf"), "best_avg": float("-inf"), "stale_wg": 0, "stale_avg": 0}

    def restore(self) -> int:
        state = ckpt.load(self.out / CHECKPOINT, self.device)
        self.algo.load_state_dict(state["algorithm"])
        self.algo.optimizer.load_state_dict(state["optimizer"])
        self.algo.scheduler.load_state_dict(state["scheduler"])
        self.algo.load_extra_state(state["extra"])
        if self.aux is not None:
            self.aux.load_state(state["aux"])
        self.epoch, self.global_step, self.stopper = state["epoch"] + 1, state["global_step"], state["stopper"]
        ckpt.set_rng_state(state["rng"])
        # Epochs evaluated after the checkpoint are trained again, so their records go; records made
        # during `setup` stay (setup does not run again on resume).
        self.records = [x for x in read_jsonl(self.out / METRICS)
                        if x["epoch"] <= state["epoch"] or str(x.get("phase", "")).startswith("setup")]
        rewrite_jsonl(self.out / METRICS, self.records)
        return state["epoch"]

    def save(self) -> None:
        ckpt.save(self.out / CHECKPOINT, {
            "epoch": self.epoch, "global_step": self.global_step, "stopper": self.stopper,
            "algorithm": self.algo.state_dict(), "optimizer": self.algo.optimizer.state_dict(),
            "scheduler": self.algo.scheduler.state_dict(), "extra": self.algo.extra_state(),
            "aux": self.aux.state() if self.aux is not None else [0, 0],
        })

    def train_epoch(self) -> dict[str, float]:
        sums: dict[str, float] = {}
        weights = self.algo.sampler_weights(self.train)
        for i, batch in enumerate(epoch_batches(self.train, self.t.batch_size, self.r.spec.seed, self.epoch, weights)):
            losses = self.algo.update(batch, self.aux.next() if self.aux is not None else None)
            self.global_step += 1
            for k, v in losses.items():
                sums[k] = sums.get(k, 0.0) + v
            self.reporter.step(self.epoch, i + 1, losses)
        return {f"train/{k}": v / self.steps for k, v in sums.items()}

    def should_stop(self, rec: dict[str, Any]) -> bool:
        """Stop only when both Val-GP's and No-GP's metric have stalled for `patience` epochs (§3)."""
        s = self.stopper
        for key, metric in (("wg", "val/worst_group_acc"), ("avg", "val/avg_acc")):
            if rec[metric] > s[f"best_{key}"]:
                s[f"best_{key}"], s[f"stale_{key}"] = rec[metric], 0
            else:
                s[f"stale_{key}"] += 1
        p = self.t.patience
        return bool(p) and s["stale_wg"] >= p and s["stale_avg"] >= p

    def loop(self) -> bool:
        """Train to the end or to early stopping; True if stopped early."""
        self.reporter.start(self.t.epochs, self.steps, self.epoch)
        while self.epoch < self.t.epochs:
            t0 = time.perf_counter()
            rec: dict[str, Any] = {"epoch": self.epoch, "step": self.global_step}
            rec.update(self.train_epoch())
            rec["step"], rec["lr"] = self.global_step, self.algo.scheduler.get_last_lr()[0]
            t1 = time.perf_counter()
            rec.update(evaluate(self.algo, self.val, "val", self.r))
            rec.update(evaluate(self.algo, self.test, "test", self.r))
            stop = self.should_stop(rec)
            rec["time/epoch_s"], rec["time/eval_s"] = time.perf_counter() - t0, time.perf_counter() - t1
            self.records.append(rec)
            # The whole file is rewritten atomically: a reader never sees a torn record.
            rewrite_jsonl(self.out / METRICS, self.records)
            self.save_selected()
            self.save()
            self.reporter.epoch_end(self.epoch, rec)
            self.epoch += 1
            if stop:
                return True
        return False

    def save_selected(self) -> None:
        save_selected_models(self.out, self.records, self.t.patience, self.algo.model, self.algo.selectable)

    def evaluate_now(self, phase: str) -> None:
        """A record of the current model outside the epoch loop (e.g. JTT's first stage, from `setup`)."""
        n = sum(1 for x in self.records if x.get("phase") == phase)
        rec: dict[str, Any] = {"epoch": n, "step": self.global_step, "phase": phase}
        rec.update(evaluate(self.algo, self.val, "val", self.r))
        rec.update(evaluate(self.algo, self.test, "test", self.r))
        self.records.append(rec)
        rewrite_jsonl(self.out / METRICS, self.records)
        self.save_selected()

    def after_training(self) -> None:
        """Let the algorithm change the trained model; if it did, evaluate it once more.

        The extra record has `"phase": "after_training"` and epoch = last epoch + 1; `select_all` then
        chooses it for every protocol (it is the method's final model). A resume drops it (its epoch is
        past the checkpoint's), and `after_training` runs again on the restored model.
        """
        changed = self.algo.after_training(self.val)
        if changed is None or changed is False:
            return
        t0 = time.perf_counter()
        rec: dict[str, Any] = {"epoch": self.epoch, "step": self.global_step, "phase": "after_training"}
        rec.update(evaluate(self.algo, self.val if changed is True else changed, "val", self.r))
        rec.update(evaluate(self.algo, self.test, "test", self.r))
        rec["time/eval_s"] = time.perf_counter() - t0
        self.records.append(rec)
        rewrite_jsonl(self.out / METRICS, self.records)
        self.save_selected()


def _config_json(r: Resolved, device: torch.device) -> dict[str, Any]:
    algo_cls = r.classes["algorithm"]
    splits = r.dataset.load()
    return {
        "identity": r.identity(),
        "spec": r.spec.to_json(),
        "backbone": r.backbone,
        "objectives": r.objectives,
        "hparams": r.hparams_json(),
        "components": {k: {"name": p.name, "dist": p.dist, "version": p.version} for k, p in r.providers().items()},
        "algorithm_flags": {"uses_train_groups": algo_cls.uses_train_groups,
                            "uses_val_groups": algo_cls.uses_val_groups},
        "data": {"name": r.info.name, "fingerprint": r.dataset.fingerprint(), "tasks": r.info.tasks,
                 "group_names": list(r.info.group_names), "sizes": {k: len(v) for k, v in splits.items()},
                 "train_group_counts": list(r.info.train_group_counts)},
        "provenance": provenance(device),
    }


def run(spec: RunSpec, out_dir: Path | None = None, reporter: Reporter | None = None) -> RunResult:
    """Train and evaluate one configuration into `out_dir`; resume if it holds a checkpoint."""
    r = resolve(spec)
    device = pick_device(spec.device)
    set_threads(device, spec.threads, r.info.modality)
    out = Path(out_dir) if out_dir is not None else default_out_dir(r)
    state = _check_out_dir(out, r)
    if state == "done":
        return RunResult(out, read_json(out / FINAL), already_finished=True)
    reporter = reporter or Reporter()
    trainer = _Trainer(r, out, device, reporter)
    resumed = None
    try:
        if state == "resume":
            resumed = trainer.restore()
        else:
            out.mkdir(parents=True, exist_ok=True)
            atomic_write_json(out / CONFIG, _config_json(r, device))
            rewrite_jsonl(out / METRICS, [])
            trainer.algo.evaluator = trainer.evaluate_now
            trainer.algo.setup(trainer.train)
            trainer.algo.evaluator = None
        t0 = time.perf_counter()
        stopped = trainer.loop()
        trainer.after_training()
    except RunFailedError as exc:
        atomic_write_json(out / "failed.json", {"status": "failed", "error": str(exc), "epoch": trainer.epoch})
        raise RunFailedError(f"run failed at epoch {trainer.epoch}: {exc} (details in {out / 'failed.json'})") from None
    finally:
        reporter.close()
    records = trainer.records
    final = {"status": "finished", "epochs_run": sum("phase" not in x for x in records), "stopped_early": stopped,
             "selection_patience": trainer.t.patience, "resumed_from_epoch": resumed,
             "time_s_this_session": time.perf_counter() - t0,
             "selections": select_all(records, trainer.t.patience, out, trainer.algo.selectable)}
    with contextlib.suppress(FileNotFoundError):
        (out / "failed.json").unlink()
    atomic_write_json(out / FINAL, final)
    return RunResult(out, final, resumed_from_epoch=resumed)


__all__ = ["run", "RunResult", "Reporter", "RunSpec", "evaluate", "pick_device", "selected_model_path"]
