"""Nash-MTL: the shared gradient as the Nash bargaining solution between the tasks (needs cvxpy)."""
from __future__ import annotations

from dataclasses import dataclass
from types import ModuleType
from typing import Any

import torch
from torch import Tensor

from ..data.base import DataInfo
from ..errors import ConfigError
from ..hparams import hp
from ..registry import ALGORITHMS
from ._counting import CountsUpdates
from ._surgery import GradientSurgery


@dataclass(frozen=True)
class NashMTLHParams:
    update_weights_every: int = hp(1, ge=1, help="solve for new weights every this many steps, reusing the last "
                                                 "ones in between (LibMTL's default 1)")
    max_norm: float = hp(1.0, ge=0, help="clip the shared gradient to this L2 norm; 0 = no clipping (LibMTL's and "
                                         "the official default 1)")


def _cvxpy(name: str = "nash_mtl") -> ModuleType:
    try:
        import cvxpy
    except ImportError:
        raise ConfigError(f'{name} needs cvxpy, an optional extra: pip install "robustbench-mtl[nash]"') from None
    return cvxpy


class NashSolver:
    """Nash-MTL's weights for a T-task Gram matrix: one compiled cvxpy problem, re-solved with new data.

    The bargaining solution alpha > 0 with (M alpha)_t = 1 / alpha_t is the minimiser of the strictly convex
    f(alpha) = 1/2 alpha' M alpha - sum_t log alpha_t (grad f = M alpha - 1/alpha), solved as one problem (with
    Clarabel) on M / |M|_F; alpha is then divided by sqrt(|M|_F), which solves the equation for M itself.
    """

    def __init__(self, n_tasks: int) -> None:
        cp = _cvxpy()
        self.cp = cp
        self.factor = cp.Parameter((n_tasks, n_tasks))  # L with L L' = M / |M|_F
        self.alpha = cp.Variable(n_tasks)
        self.problem = cp.Problem(cp.Minimize(0.5 * cp.sum_squares(self.factor.T @ self.alpha)
                                              - cp.sum(cp.log(self.alpha))))

    def __call__(self, gram: Tensor) -> Tensor | None:
        """alpha [T] (float64, CPU) for the Gram matrix M [T, T]; None where there is no solution (no direction
        improves every task, e.g. g_1 = -g_2), the solver fails, or alpha_t (M alpha)_t is off 1 by 1e-3 or more."""
        m = gram.detach().double().cpu()
        scale = float(torch.linalg.matrix_norm(m))
        if not scale > 0:
            return None
        values, vectors = torch.linalg.eigh(m / scale)
        self.factor.value = (vectors * values.clamp_min(0).sqrt()).numpy()
        try:
            self.problem.solve(solver=self.cp.CLARABEL)
        except self.cp.error.SolverError:
            return None
        if self.problem.status != self.cp.OPTIMAL or self.alpha.value is None:
            return None
        alpha = torch.from_numpy(self.alpha.value.copy())
        # An unbounded problem can come back "optimal" with huge weights: accept only a solution of the equation.
        if not bool(((alpha * (m / scale @ alpha) - 1).abs() < 1e-3).all()):
            return None
        return alpha / scale ** 0.5


def clip_norm(direction: Tensor, max_norm: float) -> Tensor:
    """`direction` scaled down to L2 norm `max_norm` if longer (as torch.nn.utils.clip_grad_norm_); 0 = no clip."""
    if max_norm <= 0:
        return direction
    return direction * (max_norm / (direction.norm() + 1e-6)).clamp(max=1.0)


@ALGORITHMS.register("nash_mtl")
class NashMTL(CountsUpdates, GradientSurgery):
    """Nash-MTL: the shared gradient sum_t alpha_t g_t with G G' alpha = 1 / alpha (the Nash bargaining solution).

    Reference: Navon, Shamsian, Achituve, Maron, Kawaguchi, Chechik, Fetaya, "Multi-Task Learning as a Bargaining
    Game", ICML 2022; LibMTL `LibMTL/weighting/Nash_MTL.py` (docs/methods.md#nash_mtl). On the backbone's
    parameters: g_t = grad of task t's mean loss R_t (one backward each); alpha > 0 solves (M alpha)_t =
    1 / alpha_t for the Gram matrix M = G G', as the minimiser of the convex 1/2 alpha' M alpha - sum_t log
    alpha_t (cvxpy; the paper and LibMTL approach it by a sequence of linearised problems); every
    `update_weights_every` steps, else the last alpha; where no solution exists the last alpha is kept
    (initially all ones). The shared gradient sum_t alpha_t g_t (norm sqrt(T) at the solution) is clipped to
    `max_norm`. alpha and the step count are checkpointed. Heads keep their ordinary gradients; --aux objectives
    add their ordinary gradient outside. Needs at least 2 tasks and cvxpy (`pip install
    "robustbench-mtl[nash]"`).
    """

    HParams = NashMTLHParams

    @classmethod
    def check(cls, name: str, info: DataInfo, objectives: tuple[str, ...]) -> None:
        super().check(name, info, objectives)
        _cvxpy(name)

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        n = len(self.info.tasks)
        self.solver = NashSolver(n)
        self.alpha = torch.ones(n, device=next(self.model.parameters()).device)  # checkpointed

    def combine(self, grads: Tensor) -> Tensor:
        if self.updates % self.hparams.update_weights_every == 0:
            solved = self.solver(grads @ grads.T)
            if solved is not None:
                self.alpha = solved.to(self.alpha.device, self.alpha.dtype)
        return clip_norm(self.alpha.to(grads.dtype) @ grads, self.hparams.max_norm)

    def extra_state(self) -> dict[str, Any]:
        return {**super().extra_state(), "alpha": self.alpha.detach().cpu().clone()}

    def load_extra_state(self, state: dict[str, Any]) -> None:
        super().load_extra_state(state)
        if "alpha" in state:
            self.alpha = state["alpha"].to(self.alpha.device, self.alpha.dtype)
