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

from collections.abc import Callable, Iterable

import torch
from torch import Tensor

CHUNK = 20  # L-BFGS iterations between two checks of the relative tolerance
HISTORY = 30  # L-BFGS's (step, gradient change) pairs kept: each iteration reads them all twice


def sq_norm(tensors: list[Tensor]) -> Tensor:
    return sum((t.detach() * t.detach()).sum() for t in tensors)


def solve_l2(params: list[Tensor], data_loss: Callable[[], Iterable[Tensor]], penalised: list[Tensor], l2: float,
             rtol: float, max_iter: int, floor: float = 0.0, patience: int | None = None,
             reuse: bool = True, history: int = HISTORY) -> tuple[int, bool]:
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

    `data_loss()` yields the data loss in terms (e.g. one per chunk of examples, each weighted by its share), each
    back-propagated as it comes: only one term's graph is alive at a time, so the memory of an evaluation does not
    grow with the examples. One term is the whole batch."""
    if l2 <= 0 or rtol <= 0:
        raise ValueError(f"solve_l2 needs l2 > 0 and rtol > 0 (a relative tolerance), got l2={l2}, rtol={rtol}")
    opt = torch.optim.LBFGS(params, lr=1, max_iter=CHUNK, max_eval=2 * CHUNK, history_size=history, tolerance_grad=0,
                            tolerance_change=0, line_search_fn="strong_wolfe")

    last_at: list[Tensor] | None = None  # the parameters of the latest evaluation (its gradients stay in .grad)
    last_value = torch.zeros(())  # ... and its value

    def closure() -> Tensor:
        nonlocal last_at, last_value
        # L-BFGS evaluates the point a step ended on again (the check below, then its own start), and its line search
        # has usually evaluated that very point last: the same parameter bits give the same value and gradients
        if reuse and last_at is not None and all(torch.equal(p.detach(), q) for p, q in zip(params, last_at)):
            return last_value
        opt.zero_grad(set_to_none=True)
        total: Tensor | None = None
        for term in data_loss():
            term.backward()
            total = term.detach() if total is None else total + term.detach()
        if total is None:
            raise ValueError("solve_l2: the data loss has no terms (no examples)")
        penalty = 0.5 * l2 * sum((p * p).sum() for p in penalised)
        penalty.backward()  # its gradient adds to the data's: the same sum as one backward of both
        last_at, last_value = [p.detach().clone() for p in params], total + penalty.detach()
        return last_value

    iters, best, stale = 0, float("inf"), 0
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
        step = min(CHUNK, max_iter - iters)
        opt.param_groups[0].update(max_iter=step, max_eval=2 * step)
        before = int(opt.state[params[0]].get("n_iter", 0))
        opt.step(closure)
        done = int(opt.state[params[0]].get("n_iter", 0)) - before
        if done == 0:  # no step was possible (the line search found no decrease): stuck short of the tolerance
            return iters, False
        iters += done
