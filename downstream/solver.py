"""Full-batch L-BFGS on an L2-penalised objective, solved to a RELATIVE gradient tolerance.

One solver for the two places that need a solved logistic regression: the L2-path probe (downstream.path,
trainer L2Path) and the convergence certificate's references (benchmark.report.convergence).

Why relative: the objective f(W) = loss(W) + l2 / 2 * |W|^2 is l2-strongly convex in the penalised weights,
so any point is within |grad f| / l2 of the optimum. Stopping at |grad f| <= rtol * l2 * max(|W|, 1) therefore
bounds the distance to the unique optimum by rtol * |W|, at every L2 strength. An absolute tolerance does not:
at l2 = 1e-6 a gradient of 1e-4 (the old stopping rule) allows a point |W| = 100 away from the optimum, so
the "solution" at weak L2 was whatever the warm start left, and two paths over the same grid chose different
points (measured on the built-in corpus: docs/benchmark.md, "The regularisation path"). Reaching the relative
tolerance at weak L2 needs float64, so callers finish in float64 (the certificate gets there from a float32 phase
that stops at an absolute floor: `floor`, `patience`). A float32 phase needs its loss VALUE in float64: the line
search compares values, and a float32 scalar near 1 (spacing 1.2e-7) stalls it near a gradient norm of 2e-4.
"""
from __future__ import annotations

import copy
from collections.abc import Callable, Iterable
from dataclasses import dataclass

import torch
from torch import Tensor

CHUNK = 20  # L-BFGS iterations between two checks of the relative tolerance
HISTORY = 30  # L-BFGS's (step, gradient change) pairs kept: each iteration reads them all twice
REFRESH = 100  # iterations between two measurements of a preconditioned head's curvature (`Preconditioned`)
# A solve's two phases (dtype, floor, patience), for `solve_l2`: float32 first (half the float64 products' time)
# until its gradient norm is FLOAT32_GRAD_FLOOR, then float64 to the relative tolerance, which the float64 phase alone
# decides: the same guarantee as float64 from the start. The float32 phase's loss VALUE must be summed in float64: a
# float32 scalar near 1 cannot represent the decreases L-BFGS's line search compares below a gradient norm of ~2e-4
# (its spacing there is 1.2e-7); with a float32 value the phase stalled at that floor, leaving the float64 phase 260
# of the 440 iterations of mockingjay's last-layer phone reference, with a float64 value it reaches 2e-5 and the
# float64 phase needs 100 (perf/certificate_starts.py --compare loss, results/certificate_loss.json).
FLOAT32_GRAD_FLOOR = 2e-5
# ... or until FLOAT32_PATIENCE checks in a row (200 iterations) have not halved its gradient norm: on nearly
# separable utterance means (mockingjay's last layer, 100 %, l2 1e-4) float32 L-BFGS crept 5,000 iterations without
# reaching the floor
FLOAT32_PATIENCE = 10
PHASES: tuple[tuple[torch.dtype, float, int | None], ...] = ((torch.float32, FLOAT32_GRAD_FLOOR, FLOAT32_PATIENCE),
                                                             (torch.float64, 0.0, None))


def sq_norm(tensors: list[Tensor]) -> Tensor:
    return sum((t.detach() * t.detach()).sum() for t in tensors)


class Kronecker:
    """The curvature of a linear softmax head as a change of variables that L-BFGS solves in: K-FAC (Martens & Grosse
    2015, "Optimizing Neural Networks with Kronecker-factored Approximate Curvature", ICML) for one layer, damped by
    exactly the L2 strength.

    With Θ = [W; b] ((D+1) x C: the weights, then the bias as the weight of a constant input 1), the Hessian of mean
    cross-entropy + l2 / 2 |W|^2 is about A ⊗ F + l2 I, A = E[x x^T] over the inputs (with the 1) and F = E[diag(p) -
    p p^T] the softmax covariance. Their eigendecompositions A = Ua diag(a) Ua^T and F = Uf diag(f) Uf^T give the
    inverse square root of that approximation, and the solver works in V with Θ = Ua (V ⊙ S) Uf^T, S_ij =
    (a_i f_j + l2)^(-1/2), where the curvature is about the identity in every direction. The objective and so its
    optimum are the same; only the path to it is shorter where the Hessian is ill-conditioned: at weak L2 on many
    examples, where plain L-BFGS needs thousands of iterations (docs/benchmark.md, "The regularisation path")."""

    def __init__(self, inputs: Tensor, softmax_cov: Tensor, l2: float) -> None:
        """`inputs` A ((D+1) x (D+1)) and `softmax_cov` F (C x C), means over the training examples."""
        a, self.ua = torch.linalg.eigh(inputs)
        f, self.uf = torch.linalg.eigh(softmax_cov)
        self.scale = (a.clamp_min(0)[:, None] * f.clamp_min(0)[None, :] + l2).rsqrt()

    @staticmethod
    def input_moment(x: Tensor) -> Tensor:
        """The sum of x x^T over the rows of x (n, D) with a constant 1 appended: ((D+1) x (D+1))."""
        x = torch.cat([x, torch.ones(len(x), 1, dtype=x.dtype, device=x.device)], 1)
        return x.T @ x

    @staticmethod
    def softmax_cov(logits: Tensor) -> Tensor:
        """The sum of diag(p) - p p^T over the rows of `logits` (n, C), p their softmax, computed in the logits'
        dtype (a preconditioner's precision decides how fast a solve gets there, not where it ends), in float64."""
        p = logits.softmax(-1)
        return (torch.diag(p.sum(0)) - p.T @ p).double()

    @staticmethod
    def _mean(terms: Iterable[tuple[Tensor, int]], what: str) -> Tensor:
        """The sum of the (float64 sum over n examples, n) terms over their total n."""
        total, n = None, 0
        for t, k in terms:
            total = t if total is None else total + t
            n += k
        if total is None:
            raise ValueError(f"Kronecker.{what}: no examples")
        return total / n

    @classmethod
    def mean_input_moment(cls, inputs: Iterable[Tensor]) -> Tensor:
        """A: the mean of `input_moment` over batches (n, D) of the training examples, in float64. It does not move
        with the head, so a solve whose inputs are fixed measures it once."""
        return cls._mean(((cls.input_moment(x).double(), len(x)) for x in inputs), "mean_input_moment")

    @classmethod
    def at(cls, inputs: Tensor, logits: Iterable[Tensor], l2: float) -> "Kronecker":
        """The curvature at the head's current `logits` (batches (n, C) over the training examples), with the inputs'
        `mean_input_moment`."""
        return cls(inputs, cls._mean(((cls.softmax_cov(z), len(z)) for z in logits), "at"), l2)

    def to(self, dtype: torch.dtype) -> "Kronecker":
        """The same change of variables in `dtype` (a float32 solve's)."""
        out = copy.copy(self)
        out.ua, out.uf, out.scale = self.ua.to(dtype), self.uf.to(dtype), self.scale.to(dtype)
        return out

    def to_v(self, theta: Tensor) -> Tensor:
        return (self.ua.T @ theta @ self.uf) / self.scale

    def to_theta(self, v: Tensor) -> Tensor:
        return self.ua @ (v * self.scale) @ self.uf.T

    def grad_v(self, grad_theta: Tensor) -> Tensor:
        """The gradient in V of an objective whose gradient in Θ is `grad_theta` (the chain rule through to_theta)."""
        return (self.ua.T @ grad_theta @ self.uf) * self.scale


@dataclass(frozen=True)
class Preconditioned:
    """A linear head among the solver's parameters, solved in the variables of its Kronecker curvature: `weight`
    (D, C), or (C, D) with `out_first` (nn.Linear's layout), and `bias` (C,), both leaves of the parameters;
    `curvature()` measures the curvature at the head's current values, at the start and again every `refresh`
    iterations (L-BFGS then starts afresh in the new variables). Measured once, from a start far from the optimum
    (a cold start at weak L2, where the softmax is uniform and its covariance the largest it gets), the curvature
    misled L-BFGS into 20x the iterations of the plain solve on a small test problem; measured every 100 iterations,
    it took 0.7x (tests/test_solver.py). Where `refresh` iterations in its variables do not halve the gradient norm,
    the solve goes on in the parameters themselves (`solve_l2`)."""

    weight: Tensor
    bias: Tensor
    curvature: Callable[[], Kronecker]
    out_first: bool = False
    refresh: int = REFRESH

    def _stack(self, w: Tensor, b: Tensor) -> Tensor:
        return torch.cat([w.T if self.out_first else w, b[None]])

    def theta(self) -> Tensor:
        return self._stack(self.weight.detach(), self.bias.detach())

    def grad_theta(self) -> Tensor:
        assert self.weight.grad is not None and self.bias.grad is not None
        return self._stack(self.weight.grad, self.bias.grad)

    @torch.no_grad()
    def assign(self, theta: Tensor) -> None:
        w = theta[:-1]
        self.weight.copy_(w.T if self.out_first else w)
        self.bias.copy_(theta[-1])


def solve_l2(params: list[Tensor], data_loss: Callable[[], Iterable[Tensor]], penalised: list[Tensor], l2: float,
             rtol: float, max_iter: int, floor: float = 0.0, patience: int | None = None,
             reuse: bool = True, history: int = HISTORY,
             precondition: Preconditioned | None = None) -> tuple[int, bool]:
    """Minimise sum(data_loss()) + l2 / 2 * sum |p|^2 over `penalised` (a subset of `params`) with full-batch L-BFGS
    until |grad| <= max(rtol * l2 * max(|penalised|, 1), floor); (iterations, solved). `solved` is False when
    `max_iter` iterations ran out or the line search stopped making progress first.

    `floor`: an absolute gradient norm that is close enough, for a first phase in a lower precision that a later
    phase finishes (the certificate's float32 phase); 0 leaves the relative tolerance alone in charge.
    `patience`: give up (unsolved) when that many checks in a row (every CHUNK iterations) have not halved the
    smallest gradient norm seen: such a phase has stalled (float32 on nearly separable data can creep for thousands
    of iterations); None runs to `max_iter`.
    `reuse`: an evaluation at the parameters of the latest one returns that one's value and leaves its gradients,
    instead of computing them again (the same bits: an evaluation is a function of the parameters);
    False computes every call (`perf/certificate_starts.py --compare evaluations` measures both).
    `history`: L-BFGS's memory, the pairs its two-loop recursion reads twice per iteration (`perf/probe_groups.py
    --history` measures another on a group of L2-path probes).
    `precondition`: a linear head among `params` that L-BFGS solves in the variables of its Kronecker curvature
    (`Kronecker`, `Preconditioned`): the same objective and tolerance (checked on the gradients of `params`), fewer
    iterations where the problem is ill-conditioned. The head's tensors hold the solution on return.

    `data_loss()` yields the data loss in terms (e.g. one per chunk of examples, each weighted by its share), each
    back-propagated as it comes: only one term's graph is alive at a time, so the memory of an evaluation does not
    grow with the examples. One term is the whole batch."""
    if l2 <= 0 or rtol <= 0:
        raise ValueError(f"solve_l2 needs l2 > 0 and rtol > 0 (a relative tolerance), got l2={l2}, rtol={rtol}")
    pre = precondition
    others = params if pre is None else [p for p in params if p is not pre.weight and p is not pre.bias]
    kron: Kronecker | None = None
    v = torch.zeros(())  # the head in the variables of `kron` (preconditioned)
    solved_in: list[Tensor] = params  # what L-BFGS moves
    opt: torch.optim.LBFGS | None = None
    last_at: list[Tensor] | None = None  # the variables of the latest evaluation (its gradients stay in .grad)
    last_value = torch.zeros(())  # ... and its value

    def start(curvature: bool) -> None:
        """A fresh L-BFGS: with `curvature`, in the variables of the head's curvature measured at the current point;
        else in the parameters themselves."""
        nonlocal kron, v, solved_in, opt, last_at
        if curvature:  # L-BFGS moves V; the head's tensors follow it at every evaluation
            assert pre is not None
            with torch.no_grad():
                kron = pre.curvature()
            v = kron.to_v(pre.theta()).requires_grad_(True)
            solved_in = [v, *others]
        else:
            kron, solved_in = None, params
        opt = torch.optim.LBFGS(solved_in, lr=1, max_iter=CHUNK, max_eval=2 * CHUNK, history_size=history,
                                tolerance_grad=0, tolerance_change=0, line_search_fn="strong_wolfe")
        last_at = None

    def closure() -> Tensor:
        nonlocal last_at, last_value
        # L-BFGS evaluates the point a step ended on again (the check below, then its own start), and its line search
        # has usually evaluated that very point last: the same parameter bits give the same value and gradients
        if reuse and last_at is not None and all(torch.equal(p.detach(), q) for p, q in zip(solved_in, last_at)):
            return last_value
        if kron is not None:
            pre.assign(kron.to_theta(v.detach()))
        for p in (*params, *solved_in):
            p.grad = None
        total: Tensor | None = None
        for term in data_loss():
            term.backward()
            total = term.detach() if total is None else total + term.detach()
        if total is None:
            raise ValueError("solve_l2: the data loss has no terms (no examples)")
        penalty = 0.5 * l2 * sum((p * p).sum() for p in penalised)
        penalty.backward()  # its gradient adds to the data's: the same sum as one backward of both
        if kron is not None:
            v.grad = kron.grad_v(pre.grad_theta())
        last_at, last_value = [p.detach().clone() for p in solved_in], total + penalty.detach()
        return last_value

    start(pre is not None)
    iters, best, stale, since = 0, float("inf"), 0, 0
    best_at_start = float("inf")  # the smallest gradient norm seen when the curvature was last measured
    while True:
        closure()
        grad = float(sq_norm([p.grad for p in params if p.grad is not None]).sqrt())
        if grad <= max(rtol * l2 * max(float(sq_norm(penalised).sqrt()), 1.0), floor):
            return iters, True
        if iters >= max_iter:
            return iters, False
        best, stale = (grad, 0) if grad <= best / 2 else (best, stale + 1)
        if patience is not None and stale >= patience:
            return iters, False
        if kron is not None and since >= pre.refresh:  # the curvature has moved with the point: measured again
            # ... unless the last `refresh` iterations in its variables did not halve the gradient: then it misleads
            # (on separable examples, one per class, the softmax is near one-hot and its covariance says little of the
            # Hessian) and the rest of the solve is in the parameters themselves
            start(best <= best_at_start / 2)
            best_at_start, since = best, 0
        assert opt is not None
        step = min(CHUNK, max_iter - iters)
        opt.param_groups[0].update(max_iter=step, max_eval=2 * step)
        before = int(opt.state[solved_in[0]].get("n_iter", 0))
        opt.step(closure)
        done = int(opt.state[solved_in[0]].get("n_iter", 0)) - before
        if done == 0:  # no step was possible (the line search found no decrease): stuck short of the tolerance
            return iters, False
        iters += done
        since += done
