"""One training run between epochs: build the algorithm, train, evaluate, checkpoint, stop, resume."""
from __future__ import annotations

import json
import math
import time
from pathlib import Path
from typing import Any

import torch

from . import checkpoint as ckpt
from .algorithms.base import Algorithm
from .config import Resolved
from .data.base import DataInfo, TensorSplit
from .errors import RunFailedError
from .labels import algorithm_info, train_view, val_view
from .loaders import AuxStream, epoch_batches, epoch_length, steps_per_epoch
from .metrics import split_metrics
from .model import Model
from .objectives.base import AuxiliaryTask
from .results import CHECKPOINT, METRICS, append_jsonl, read_jsonl, rewrite_jsonl
from .selection import chosen_weight_files, save_selected_models


class Reporter:
    """Progress callbacks; the CLI draws a progress bar or prints lines, library use stays silent."""

    def start(self, epochs: int, steps: int, start_epoch: int) -> None: ...
    def resumed(self, epoch: int, out: Path) -> None: ...
    def step(self, epoch: int, step: int, losses: dict[str, float]) -> None: ...
    def epoch_end(self, epoch: int, record: dict[str, Any]) -> None: ...
    def close(self) -> None: ...


def assemble(classes: dict[str, type], hparams: dict[str, Any], objectives: list[str], info: DataInfo, seed: int,
             total_steps: int, device: torch.device = torch.device("cpu")) -> Algorithm:
    """Backbone, objectives, heads and algorithm from component classes and hparams (keys as in `Resolved`),
    seeded so the same inputs build the same weights. `info` is what the components may know (see
    `labels.algorithm_info`). `robustbench_mtl.testing` builds through here too."""
    ckpt.seed_everything(seed)
    backbone = classes["backbone"](hparams["backbone"], info)
    if getattr(hparams["backbone"], "init", ""):  # weights saved by `robustbench-mtl pretrain`
        backbone.load_init(hparams["backbone"].init)
    objs = {o: classes[f"objective:{o}"](hparams[o], backbone, info) for o in objectives}
    model = Model(backbone, info.tasks, objs, hparams["model"].head_norm)
    return classes["algorithm"](model.to(device), hparams["algorithm"], hparams["train"], info, total_steps)


def build(r: Resolved, device: torch.device, total_steps: int) -> Algorithm:
    """The run's algorithm on its device, with bf16 autocast on CUDA (or when asked for)."""
    algo = assemble(r.classes, r.hparams, r.objectives, algorithm_info(r.info, r.use), r.spec.seed, total_steps,
                    device)
    precision = r.hparams["train"].precision
    if precision == "bf16" or (precision == "auto" and device.type == "cuda"):
        algo.autocast = torch.autocast(device.type, dtype=torch.bfloat16)
    return algo


@torch.no_grad()
def evaluate(algo: Algorithm, split: TensorSplit, name: str, r: Resolved) -> dict[str, float]:
    """Predictions over a whole split, then metrics overall, per group and per class (logits: AUROC, ECE)."""
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
    return split_metrics(name, preds, split.y, split.g, r.info, float(loss), split.groups, logits=full)


class Trainer:
    """The state of one training run between epochs."""

    def __init__(self, r: Resolved, out: Path, device: torch.device, reporter: Reporter) -> None:
        self.r, self.out, self.device, self.reporter = r, out, device, reporter
        self.t = r.hparams["train"]
        splits = {k: v.to(device) for k, v in r.dataset.load().items()}
        # The algorithm sees only the labels it declares (labels.py); evaluation sees everything.
        self.train, self.val, self.test = train_view(splits["train"], r.use), splits["val"], splits["test"]
        self.algo = build(r, device, self.t.epochs * steps_per_epoch(len(self.train), self.t.batch_size))
        self.algo.split_evaluator = lambda split: evaluate(self.algo, split, "val", r)
        self.algo.train_split = self.train
        has_aux = any(isinstance(o, AuxiliaryTask) for o in self.algo.model.objectives.values())
        bs_aux = self.t.aux_batch_size or self.t.batch_size
        # A dataset may offer its own auxiliary inputs (split "aux": e.g. unlabeled text of the same domain,
        # the paper's Table 12 ablation); else the auxiliary stream reads the training inputs.
        aux_split = splits.get("aux", self.train)
        self.aux = AuxStream(aux_split, bs_aux, r.spec.seed) if has_aux else None
        self.epoch, self.global_step, self.stopped = 0, 0, False
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
        self.stopped = bool(state.get("stopped", False))  # an early stop is final: no extra epoch on resume
        ckpt.set_rng_state(state["rng"])
        # The checkpoint holds every record up to its epoch (setup records included), so a torn or lost
        # metrics.jsonl line costs nothing; epochs after the checkpoint are trained again.
        self.records = (json.loads(state["records_json"]) if "records_json" in state
                        else state["records"] if "records" in state else [  # older: pickled list; 0.1.0: none
                            x for x in read_jsonl(self.out / METRICS)
                            if x["epoch"] <= state["epoch"] or x.get("phase") == "setup"])
        rewrite_jsonl(self.out / METRICS, self.records)
        # The weights chosen before the checkpoint are not written again; a machine crash may have cut them
        # short (per-epoch writes skip fsync), and final.json must not vouch for them then.
        for path in chosen_weight_files(self.out, self.records, self.t.patience, self.algo.selectable):
            ckpt.load(path, restart=self.out / CHECKPOINT)
        return state["epoch"]

    def save(self) -> None:
        ckpt.save(self.out / CHECKPOINT, {
            "epoch": self.epoch, "global_step": self.global_step, "stopper": self.stopper, "stopped": self.stopped,
            # As one JSON string (NaN kept), not a pickled list: pickling ~70 objects per record, every record
            # at every epoch, cost a 100-epoch synthetic run a third of its time.
            "records_json": json.dumps(self.records),
            "algorithm": self.algo.state_dict(), "optimizer": self.algo.optimizer.state_dict(),
            "scheduler": self.algo.scheduler.state_dict(), "extra": self.algo.extra_state(),
            "aux": self.aux.state() if self.aux is not None else [0, 0],
        })

    def setup(self) -> None:
        """The algorithm's `setup` (fresh runs only), with `evaluate_now` records."""
        self.algo.evaluator = self.evaluate_now
        try:
            self.algo.setup(self.train)
        finally:
            self.algo.evaluator = None

    def epoch_steps(self) -> int:
        repeats = self.algo.sampler_repeats(self.train)
        return steps_per_epoch(epoch_length(len(self.train), repeats), self.t.batch_size)

    def _check_losses(self, losses: Any, step: int) -> dict[str, float]:
        """Every value an `update` returns must be a finite number, whoever wrote the algorithm."""
        values = {k: float(v) for k, v in losses.items()}
        bad = [k for k, v in values.items() if not math.isfinite(v)]
        if bad:
            prov = self.r.providers()["algorithm"]
            raise RunFailedError(
                f"algorithm '{self.r.spec.algorithm}' (from {prov.dist} {prov.version}) returned a non-finite "
                f"{', '.join(bad)} at epoch {self.epoch} step {step}; lower train.lr or the objective weights, "
                f"or set train.grad_clip")
        return values

    def train_epoch(self) -> dict[str, float]:
        sums: dict[str, float] = {}
        weights, repeats = self.algo.sampler_weights(self.train), self.algo.sampler_repeats(self.train)
        steps = 0
        for steps, batch in enumerate(epoch_batches(self.train, self.t.batch_size, self.r.spec.seed, self.epoch,
                                                    weights, repeats), start=1):
            losses = self._check_losses(self.algo.update(batch, self.aux.next() if self.aux is not None else None),
                                        steps)
            self.global_step += 1
            for k, v in losses.items():
                sums[k] = sums.get(k, 0.0) + v
            self.reporter.step(self.epoch, steps, losses)
        return {f"train/{k}": v / max(steps, 1) for k, v in sums.items()}

    def should_stop(self, rec: dict[str, Any]) -> bool:
        """Stop only when both Val-GP's and No-GP's metric have stalled for `patience` epochs."""
        s = self.stopper
        for key, metric in (("wg", "val/worst_group_acc"), ("avg", "val/avg_acc")):
            value = rec.get(metric)
            if value is not None and value > s[f"best_{key}"]:
                s[f"best_{key}"], s[f"stale_{key}"] = value, 0
            else:
                s[f"stale_{key}"] += 1
        p = self.t.patience
        return bool(p) and s["stale_wg"] >= p and s["stale_avg"] >= p

    def loop(self) -> bool:
        """Train to the end or to early stopping; True if stopped early."""
        self.reporter.start(self.t.epochs, self.epoch_steps(), self.epoch)
        while not self.stopped and self.epoch < self.t.epochs:
            t0 = time.perf_counter()
            rec: dict[str, Any] = {"epoch": self.epoch, "step": self.global_step}
            rec.update(self.train_epoch())
            rec["step"], rec["lr"] = self.global_step, self.algo.scheduler.get_last_lr()[0]
            t1 = time.perf_counter()
            rec.update(evaluate(self.algo, self.val, "val", self.r))
            rec.update(evaluate(self.algo, self.test, "test", self.r))
            self.stopped = self.should_stop(rec)
            rec["time/epoch_s"], rec["time/eval_s"] = time.perf_counter() - t0, time.perf_counter() - t1
            self._append(rec)
            self.save()  # with the stop decision: a crash before final.json never trains another epoch
            self.epoch += 1
            self.reporter.epoch_end(self.epoch - 1, rec)
        return self.stopped

    def _append(self, rec: dict[str, Any]) -> None:
        self.records.append(rec)
        append_jsonl(self.out / METRICS, rec)
        save_selected_models(self.out, self.records, self.t.patience, self.algo.model, self.algo.selectable)

    def evaluate_now(self, phase: str) -> None:
        """A record of the current model outside the epoch loop (e.g. JTT's first stage, from `setup`)."""
        n = sum(1 for x in self.records if x.get("phase") == phase)
        rec: dict[str, Any] = {"epoch": n, "step": self.global_step, "phase": phase}
        rec.update(evaluate(self.algo, self.val, "val", self.r))
        rec.update(evaluate(self.algo, self.test, "test", self.r))
        self._append(rec)

    def after_training(self) -> None:
        """Let the algorithm change the trained model; if it did, evaluate it once more.

        The extra record has `"phase": "after_training"` and epoch = last epoch + 1; `select_all` then
        chooses it for every protocol (it is the method's final model). A resume drops it (its epoch is
        past the checkpoint's), and `after_training` runs again on the restored model.
        """
        changed = self.algo.after_training(val_view(self.val, self.r.use))
        if changed is None or changed is False:
            return
        t0 = time.perf_counter()
        rec: dict[str, Any] = {"epoch": self.epoch, "step": self.global_step, "phase": "after_training"}
        if isinstance(changed, dict):  # metrics the algorithm computed on val data it did not fit on, and extras
            rec.update(changed)
            if not any(k.startswith("val/") for k in changed):  # extras only (AFR's gamma): all of val, as True
                rec.update(evaluate(self.algo, self.val, "val", self.r))
        else:
            rec.update(evaluate(self.algo, self._val_part(changed), "val", self.r))
        rec.update(evaluate(self.algo, self.test, "test", self.r))
        rec["time/eval_s"] = time.perf_counter() - t0
        self._append(rec)

    def _val_part(self, part: bool | TensorSplit | torch.Tensor) -> TensorSplit:
        """All of val (True), the returned split as given, or the rows of val with the given indices."""
        if isinstance(part, torch.Tensor):  # row indices: evaluated with every label, groups included
            return self.val.subset(part)
        return self.val if part is True else part
