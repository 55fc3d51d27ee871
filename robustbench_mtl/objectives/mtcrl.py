"""MT-CRL: module heads on the shared representation, a task-to-module routing graph, routed task heads, and
the decorrelation, graph and G-IRM regularisers."""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any, Literal

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from ..backbones.base import Backbone
from ..data.base import DataInfo
from ..errors import ConfigError
from ..hparams import Choice, hp
from ..registry import OBJECTIVES
from ..types import Batch, Outputs
from .base import Penalty

A_HAT_INIT = math.log(math.e - 1)  # softplus(A_HAT_INIT) = 1: every task starts using every module equally
EPS = 1e-5  # variance floor when standardising module outputs (a dead ReLU unit has variance 0)


@dataclass(frozen=True)
class MTCRLHParams:
    weight: float = hp(1.0, ge=0, help="multiplies the whole MT-CRL regulariser (its lambdas weight the parts); "
                                       "1 = the paper's total loss")
    num_modules: int = hp(8, Choice((4, 8)), ge=1, help="K, the number of module heads Phi_k [RECON]")
    module_dim: int = hp(16, ge=1, help="d, the width of each module Phi_k = Linear(D, d) + ReLU [RECON]")
    head_hidden: int = hp(64, ge=1, help="hidden width of each routed task head MLP(in -> hidden -> C_t) [RECON]")
    routing: Literal["concat", "sum"] = hp(
        "concat", help="task input z_t: concat = concat_k(A_tk Phi_k(x)) [K*d] (gating); sum = sum_k A_tk Phi_k(x) "
                       "[d] [RECON]")
    lambda_decor: float = hp(0.1, Choice((0.01, 0.1, 1.0)), ge=0,
                             help="weight of L_decor, the modules' cross-correlation [RECON grid]")
    lambda_sps: float = hp(1e-3, Choice((1e-3, 1e-2)), ge=0, help="weight of ||A||_1 in L_graph [RECON grid]")
    lambda_bal: float = hp(1e-2, Choice((1e-3, 1e-2, 1e-1)), ge=0,
                           help="weight of the module-usage entropy subtracted in L_graph [RECON grid]")
    girm: Literal["none", "var", "norm"] = hp(
        "var", help="G-IRM form: var = the spread of per-environment gradients wrt A_t; norm = their squared norm "
                    "(IRMv1 analogue); none = MT-CRL without G-IRM (needs no environments)")
    lambda_girm: float = hp(10.0, Choice((1.0, 10.0, 100.0)), ge=0,
                            help="lambda_G-IRM after the anneal [RECON grid]")
    anneal_fraction: float = hp(0.1, ge=0, le=1, help="lambda_G-IRM = 0 for this fraction of the schedule's "
                                                     "steps, then lambda_girm [RECON]")
    rescale: bool = hp(True, help="divide the step's whole loss by lambda_girm when it is active and > 1 (as IRM)")
    reset_optimizer: bool = hp(True, help="clear the optimizer's moments at the anneal step (as IRM here)")


# -- the losses, as functions of tensors (tests check them against hand computations) -------------------------
def route(feats: Tensor, a: Tensor, routing: str) -> Tensor:
    """Task input from module outputs [B, K, d] and one task's routing row a [K]: [B, K*d] or [B, d]."""
    gated = feats * a.view(1, -1, 1)
    return gated.flatten(1) if routing == "concat" else gated.sum(1)


def decorrelation(feats: Tensor) -> Tensor:
    """L_decor = 1/(K(K-1)) sum_{i != j} ||C_ij||_F^2 / d^2, C_ij = Z_i^T Z_j / B, Z_k module k's outputs [B, d]
    standardised over the batch (population variance, floored by EPS); 0 for one module.

    [RECON] The division by d^2 (each C_ij's mean squared entry, a squared correlation in [0, 1]) is ours: without
    it the term is ~7 at initialisation for d = 16 (and d^2/B = 4 from sampling noise alone for independent
    modules at B = 64), and lambda_decor = 0.1 made the modules' ReLUs die (a constant unit has no correlation)
    and training stay at chance on multidigits."""
    b, k, d = feats.shape
    feats = feats.float()
    z = ((feats - feats.mean(0)) / (feats.var(0, unbiased=False) + EPS).sqrt()).flatten(1)
    blocks = (z.T @ z / b).view(k, d, k, d).pow(2).mean((1, 3))  # [K, K]: ||C_ij||_F^2 / d^2
    off = blocks.sum() - blocks.diagonal().sum()
    return off / (k * (k - 1)) if k > 1 else off * 0.0


def graph_loss(a: Tensor, lambda_sps: float, lambda_bal: float) -> Tensor:
    """L_graph = lambda_sps ||A||_1 - lambda_bal H(p), p_k = sum_t A_tk / sum_tk A_tk (module usage)."""
    p = a.sum(0) / a.sum()
    entropy = -(p * p.clamp_min(1e-12).log()).sum()
    return lambda_sps * a.abs().sum() - lambda_bal * entropy


def env_risks(losses: Tensor, labelled: Tensor, e: Tensor) -> tuple[Tensor, Tensor]:
    """(R [E, T], present [E, T]) over the environments in the batch (ids >= 0, ascending): R^e_t is task t's
    mean per-example loss (losses [B, T], 0 where unlabelled) over env e's labelled examples; present says
    whether env e has any (R = 0 where not, so no NaN enters the graph)."""
    envs = torch.unique(e[e >= 0])
    member = (e.unsqueeze(1) == envs.unsqueeze(0)).to(losses.dtype)  # [B, E]
    counts = member.T @ labelled.to(losses.dtype)
    return (member.T @ losses) / counts.clamp_min(1), counts > 0


def risk_gradients(risks: Tensor, a: Tensor) -> Tensor:
    """g [E, T, K], g[e, t] = dR^e_t / dA_t, kept in the graph so the penalty trains what it depends on.

    R^e_t depends on row t of A only (task t's head reads A_t), so the gradient of sum_t R^e_t wrt A holds
    every task's g_{t,e} in its rows: one autograd call per environment."""
    return torch.stack([torch.autograd.grad(r.sum(), a, create_graph=True)[0] for r in risks])


def girm_penalty(grads: Tensor, present: Tensor, form: str) -> Tensor:
    """var: sum_t 1/|E_t| sum_e ||g_te - mean_e g_te||^2; norm: sum_t 1/|E_t| sum_e ||g_te||^2, over the
    environments E_t where task t has labelled examples (grads [E, T, K], present [E, T])."""
    w = present.to(grads.dtype).unsqueeze(-1)  # [E, T, 1]
    n = w.sum(0).clamp_min(1)  # [T, 1]
    if form == "var":
        grads = grads - (w * grads).sum(0) / n
    return ((w * grads.pow(2)).sum((0, 2)) / n.squeeze(-1)).sum()


def anneal_steps(fraction: float, total_steps: int) -> int:
    """Steps with lambda_G-IRM = 0: ceil(fraction x total), robust to float error (0.1 x 30 = 3.0000000000000004)."""
    return math.ceil(round(fraction * total_steps, 9))


def girm_weight(step: int, n_anneal: int, value: float) -> float:
    """0 for the first `n_anneal` steps, then `value`."""
    return value if step >= n_anneal else 0.0


@OBJECTIVES.register("mtcrl")
class MTCRL(Penalty):
    """MT-CRL: K modules, a task-to-module routing graph A, routed task heads; L_decor + L_graph + annealed G-IRM.

    Reference: Hu et al., "Improving Multi-Task Generalization via Regularizing Spurious Correlation", NeurIPS
    2022 (docs/methods.md#mtcrl). Verified (the slides): L_graph = lambda_sps ||A||_1 - lambda_bal H(normalised
    module usage) and the G-IRM var form. Everything else is a RECONSTRUCTION [RECON] (no official code):
    - [RECON] modules Phi_k = Linear(D, d) + ReLU on the pooled representation [B, D] (one Linear(D, K d));
    - [RECON] A = softplus(A_hat) in R^{T x K}, A_hat initialised to log(e - 1) so A = 1;
    - [RECON] z_t = concat_k(A_tk Phi_k(x)) (`routing=concat`) or sum_k A_tk Phi_k(x) (`sum`); head f_t =
      MLP(z_t -> 64 -> C_t). These heads replace the model's linear heads (`provides_heads`): prediction and
      every algorithm's end-task loss read them;
    - [RECON] L_decor = 1/(K(K-1)) sum_{i != j} ||Z_i^T Z_j / B||_F^2 / d^2 on the end-task pass's modules,
      standardised (the / d^2 is ours: see `decorrelation`);
    - [RECON] G-IRM: the end-task batch split by environment id (e >= 0); R^e_t = task t's mean loss there;
      g_te = dR^e_t/dA_t (autograd, create_graph); var: sum_t mean_e ||g_te - mean_e g_te||^2; norm: sum_t
      mean_e ||g_te||^2; gradients reach every parameter (Phi, A, heads, backbone), as IRMv1's do. With one
      environment in a batch var is 0 and norm is that environment's term;
    - [RECON] the term each step: lambda_decor L_decor + L_graph + lambda(step) G-IRM, lambda = 0 for
      ceil(anneal_fraction x total steps) optimizer steps, then lambda_girm; with `rescale` the whole loss
      of the step is divided by lambda when lambda > 1, and with `reset_optimizer` the optimizer's moments are
      cleared at the switch (Algorithm.step reads `loss_divisor` / `restarts_optimizer`), as IRM here.
    Needs >= 2 tasks, and with G-IRM >= 2 declared training environments (then the run uses environments).
    """

    HParams = MTCRLHParams
    provides_heads = True

    def __init__(self, hparams: MTCRLHParams, backbone: Backbone, info: DataInfo) -> None:
        super().__init__(hparams, backbone, info)
        h = hparams
        self.tasks = tuple(info.tasks)
        self.encoder = nn.Linear(backbone.out_dim, h.num_modules * h.module_dim)  # the K modules in one matmul
        self.a_hat = nn.Parameter(torch.full((len(self.tasks), h.num_modules), A_HAT_INIT))
        width = h.num_modules * h.module_dim if h.routing == "concat" else h.module_dim
        self.heads = nn.ModuleDict({t: nn.Sequential(nn.Linear(width, h.head_hidden), nn.ReLU(),
                                                     nn.Linear(h.head_hidden, c)) for t, c in info.tasks.items()})
        self.register_buffer("steps", torch.zeros((), dtype=torch.long))  # optimizer steps: the anneal clock
        self._lam, self._switch = 0.0, False  # this step's G-IRM weight and anneal switch, for Algorithm.step

    @classmethod
    def check(cls, name: str, backbone_name: str, backbone_cls: type[Backbone], info: DataInfo) -> None:
        super().check(name, backbone_name, backbone_cls, info)
        if len(info.tasks) < 2:
            raise ConfigError(f"objective '{name}' routes modules between tasks and needs at least 2, but dataset "
                              f"'{info.name}' has {len(info.tasks)} ({', '.join(info.tasks)}); use a multi-task "
                              f"dataset such as multidigits")

    @classmethod
    def environment_use(cls, hparams: Any) -> str | None:
        if hparams.girm == "none" or hparams.lambda_girm == 0:
            return None
        return f"G-IRM (mtcrl.girm={hparams.girm}; mtcrl.girm=none runs without it)"

    def notes(self) -> dict[str, Any]:
        h = self.hparams
        form = "concat_k(A_tk Phi_k(x)), K*d" if h.routing == "concat" else "sum_k A_tk Phi_k(x), d"
        return {"routing": f"{h.routing}: z_t = {form}", "K": h.num_modules, "d": h.module_dim,
                "heads": f"routed MLP(z_t -> {h.head_hidden} -> C_t) per task, replacing the linear heads",
                "girm": h.girm, "anneal": f"lambda_girm = 0 for ceil({h.anneal_fraction} x total steps) steps"}

    # -- the network ---------------------------------------------------------------------
    def routing_graph(self) -> Tensor:
        """A = softplus(A_hat) [T, K], non-negative."""
        return F.softplus(self.a_hat)

    def module_outputs(self, pooled: Tensor) -> Tensor:
        """Phi_k(x) for every module: [B, K, d]."""
        return F.relu(self.encoder(pooled)).view(len(pooled), self.hparams.num_modules, self.hparams.module_dim)

    def _logits(self, feats: Tensor, a: Tensor) -> dict[str, Tensor]:
        return {t: self.heads[t](route(feats, a[i], self.hparams.routing)) for i, t in enumerate(self.tasks)}

    def task_logits(self, out: Outputs) -> dict[str, Tensor]:
        return self._logits(self.module_outputs(out.pooled), self.routing_graph())

    # -- the losses ----------------------------------------------------------------------
    def _regularisers(self, feats: Tensor, a: Tensor) -> Tensor:
        h = self.hparams
        return h.lambda_decor * decorrelation(feats) + graph_loss(a, h.lambda_sps, h.lambda_bal)

    def loss(self, reps: dict[str, Outputs]) -> Tensor:
        """lambda_decor L_decor + L_graph on the end-task pass (G-IRM needs the batch: see `batch_loss`)."""
        return self._regularisers(self.module_outputs(reps["end"].pooled), self.routing_graph())

    def girm(self, feats: Tensor, a: Tensor, batch: Batch) -> Tensor:
        """The unweighted G-IRM penalty on the end-task batch split by environment id."""
        if not bool((batch.e >= 0).any()):
            raise RuntimeError("mtcrl: G-IRM needs training environment ids, and this batch has none (e = -1); "
                               "the run must pass the objective's environment_use to labels.label_use")
        logits = self._logits(feats, a)
        losses = torch.stack([F.cross_entropy(logits[t].float(), batch.y[t], ignore_index=-1, reduction="none")
                              for t in self.tasks], 1)
        labelled = torch.stack([batch.y[t] >= 0 for t in self.tasks], 1)
        risks, present = env_risks(losses, labelled, batch.e)
        return girm_penalty(risk_gradients(risks, a), present, self.hparams.girm)

    def batch_loss(self, reps: dict[str, Outputs], batch: Batch, total_steps: int) -> Tensor:
        h, out = self.hparams, reps["end"]
        feats, a = self.module_outputs(out.pooled), self.routing_graph()
        total = self._regularisers(feats, a)
        n_anneal, step = anneal_steps(h.anneal_fraction, total_steps), int(self.steps)
        # tapt's end pass has no heads: it reads no labels, so no G-IRM there
        self._lam = girm_weight(step, n_anneal, h.lambda_girm) if h.girm != "none" and out.logits else 0.0
        self._switch = h.reset_optimizer and n_anneal > 0 and step == n_anneal and self._lam > 0
        if self._lam > 0:  # nothing to compute during the anneal
            total = total + self._lam * self.girm(feats, a, batch)
        return total

    def loss_divisor(self) -> float:
        return self._lam if self.hparams.rescale and self._lam > 1 else 1.0

    def restarts_optimizer(self) -> bool:
        return self._switch

    @torch.no_grad()
    def post_step(self) -> None:
        self.steps += 1
        self._lam, self._switch = 0.0, False  # a step without objective terms (JTT's stage 1) changes nothing
