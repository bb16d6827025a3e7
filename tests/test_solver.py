"""downstream.solver: each L2 point is solved to its unique optimum, whatever the start (the old absolute
gradient tolerance left weak-L2 points wherever the warm start put them)."""
import pytest
import torch
import torch.nn.functional as F

from downstream.solver import solve_l2


def _separable(n=60, d=20, c=5, seed=0):
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(n, d, generator=g, dtype=torch.float64)
    y = (x @ torch.randn(d, c, generator=g, dtype=torch.float64)).argmax(-1)  # linearly separable labels
    return x, y


def _solve(x, y, l2, start, rtol, max_iter=20000):
    W = start[0].clone().requires_grad_(True)
    b = start[1].clone().requires_grad_(True)
    iters, ok = solve_l2([W, b], lambda: [F.cross_entropy(x @ W + b, y)], [W], l2, rtol, max_iter)
    return W.detach(), b.detach(), iters, ok


def test_weak_l2_point_is_the_same_from_any_start():
    x, y = _separable()
    zeros = (torch.zeros(20, 5, dtype=torch.float64), torch.zeros(5, dtype=torch.float64))
    strong = _solve(x, y, 1e-2, zeros, 1e-3)[:2]  # the warm start of a path
    cold, warm = _solve(x, y, 1e-5, zeros, 1e-3), _solve(x, y, 1e-5, strong, 1e-3)
    assert cold[3] and warm[3]
    # within rtol x |W| of the one optimum each, so within 2 x rtol of each other
    assert (cold[0] - warm[0]).norm() <= 2e-3 * cold[0].norm()
    # an absolute rule (stop at max |grad| <= 1e-4, the old one) stops the warm start 20x farther from the
    # optimum than the relative rule's bound: what made two paths over one grid choose different points
    W = strong[0].clone().requires_grad_(True)
    b = strong[1].clone().requires_grad_(True)
    opt = torch.optim.LBFGS([W, b], max_iter=1000, tolerance_grad=1e-4, tolerance_change=0, line_search_fn="strong_wolfe")

    def closure():
        opt.zero_grad()
        loss = F.cross_entropy(x @ W + b, y) + 0.5 * 1e-5 * (W * W).sum()
        loss.backward()
        return loss

    opt.step(closure)
    assert (W.detach() - cold[0]).norm() > 20 * 2e-3 * cold[0].norm()


def test_iteration_cap_is_reported_unsolved():
    x, y = _separable()
    zeros = (torch.zeros(20, 5, dtype=torch.float64), torch.zeros(5, dtype=torch.float64))
    W, _, iters, ok = _solve(x, y, 1e-6, zeros, 1e-3, max_iter=5)
    assert iters <= 5 and not ok


def test_needs_a_positive_l2_and_rtol():
    x, y = _separable()
    zeros = (torch.zeros(20, 5, dtype=torch.float64), torch.zeros(5, dtype=torch.float64))
    with pytest.raises(ValueError, match="l2 > 0"):
        _solve(x, y, 0.0, zeros, 1e-3)
    with pytest.raises(ValueError, match="rtol"):
        _solve(x, y, 1e-3, zeros, 0.0)


def test_a_floor_and_a_patience_end_a_lower_precision_phase():
    """The certificate's float32 phase: `floor` accepts an absolute gradient norm; `patience` gives up (unsolved) on a
    phase whose gradient norm stops halving, instead of creeping on to max_iter."""
    x, y = _separable()
    x32 = x.float()

    def run(**kw):
        W = torch.zeros(20, 5, requires_grad=True)
        b = torch.zeros(5, requires_grad=True)
        iters, ok = solve_l2([W, b], lambda: [F.cross_entropy(x32 @ W + b, y)], [W], 1e-6, 1e-12, 3000, **kw)
        grad = torch.autograd.grad(F.cross_entropy(x32 @ W + b, y) + 0.5e-6 * (W * W).sum(), [W, b])
        return iters, ok, float(sum((g * g).sum() for g in grad).sqrt())

    iters, ok, grad = run(floor=1e-3)
    assert ok and grad <= 1e-3 and iters < 3000
    iters, ok, _ = run(patience=2)  # a tolerance float32 cannot reach: stopped once two checks in a row gain < 2x
    assert not ok and iters < 3000


def test_a_point_evaluated_last_is_not_evaluated_again():
    """L-BFGS asks for the point a step ended on again (the tolerance check, then the next step's start), usually the
    point its line search evaluated last: those calls reuse that evaluation, with the same bits as computing it."""
    x, y = _separable()

    def run(reuse):
        calls = []
        W = torch.zeros(20, 5, dtype=torch.float64, requires_grad=True)
        b = torch.zeros(5, dtype=torch.float64, requires_grad=True)

        def data_loss():
            calls.append(1)
            return [F.cross_entropy(x @ W + b, y)]
        iters, ok = solve_l2([W, b], data_loss, [W], 1e-5, 1e-3, 20000, reuse=reuse)
        return W.detach(), b.detach(), iters, ok, len(calls)

    fresh, reused = run(False), run(True)
    assert fresh[3] and reused[3] and fresh[2] == reused[2] > 40  # several chunks of CHUNK iterations
    assert torch.equal(fresh[0], reused[0]) and torch.equal(fresh[1], reused[1])
    # at least the check and the next start of every chunk after the first share one evaluation
    assert reused[4] <= fresh[4] - fresh[2] // 20
