"""downstream.solver: each L2 point is solved to its unique optimum, whatever the start (the old absolute
gradient tolerance left weak-L2 points wherever the warm start put them)."""
import pytest
import torch
import torch.nn.functional as F

from downstream.solver import Kronecker, Preconditioned, solve_l2


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


def _ill_conditioned(n=400, d=30, c=6, seed=0):
    """Correlated features of very different scales (as the utterance means of a Transformer's hidden state, only
    standardised), with labels a linear head cannot fit exactly."""
    g = torch.Generator().manual_seed(seed)
    mix = torch.randn(d, d, generator=g, dtype=torch.float64) * torch.logspace(-2, 0, d, dtype=torch.float64)
    x = torch.randn(n, d, generator=g, dtype=torch.float64) @ mix
    x = (x - x.mean(0)) / x.std(0)
    logits = x @ torch.randn(d, c, generator=g, dtype=torch.float64) + torch.randn(n, c, generator=g, dtype=torch.float64)
    return x, logits.argmax(-1)


def _solve_pre(x, y, l2, rtol, precondition, refresh=100):
    W = torch.zeros(x.shape[1], int(y.max()) + 1, dtype=torch.float64, requires_grad=True)
    b = torch.zeros(int(y.max()) + 1, dtype=torch.float64, requires_grad=True)
    pre = None
    if precondition:
        pre = Preconditioned(W, b, lambda: Kronecker.at(Kronecker.mean_input_moment([x]), [x @ W + b], l2),
                             refresh=refresh)
    iters, ok = solve_l2([W, b], lambda: [F.cross_entropy(x @ W + b, y)], [W], l2, rtol, 20000, precondition=pre)
    return W.detach(), b.detach(), iters, ok


def test_the_kronecker_gradient_is_the_chain_rule():
    """Kronecker.grad_v is the gradient in V of any objective of Θ = to_theta(V), given its gradient in Θ."""
    g = torch.Generator().manual_seed(1)
    A = torch.randn(6, 6, generator=g, dtype=torch.float64)
    C = torch.randn(4, 4, generator=g, dtype=torch.float64)
    kron = Kronecker(A @ A.T / 6, C @ C.T / 4, 1e-3)
    v = torch.randn(6, 4, generator=g, dtype=torch.float64, requires_grad=True)
    theta = kron.to_theta(v)
    (theta.sin().sum()).backward()
    assert torch.allclose(v.grad, kron.grad_v(theta.detach().cos()), rtol=1e-10, atol=1e-12)
    assert torch.allclose(kron.to_v(kron.to_theta(v.detach())), v.detach(), rtol=1e-8, atol=1e-10)


def test_a_solve_in_the_curvature_reaches_the_same_optimum_in_fewer_iterations():
    """The change of variables leaves the objective and the tolerance alone: both solves end within rtol x |W| of the
    one optimum, and on an ill-conditioned problem at weak L2 the preconditioned one gets there in fewer iterations
    (280 against 400 here) as long as its curvature is measured again as the point moves: measured once, at a cold
    start (a uniform softmax, its covariance the largest it gets), it misleads L-BFGS into many times more."""
    x, y = _ill_conditioned()
    plain, pre = _solve_pre(x, y, 1e-6, 1e-3, False), _solve_pre(x, y, 1e-6, 1e-3, True)
    assert plain[3] and pre[3]
    assert (plain[0] - pre[0]).norm() <= 2e-3 * plain[0].norm()
    assert pre[2] <= 0.8 * plain[2], (pre[2], plain[2])
    once = _solve_pre(x, y, 1e-6, 1e-3, True, refresh=10**9)
    assert once[3] and once[2] >= 5 * plain[2], (once[2], plain[2])


def test_a_curvature_that_misleads_is_dropped():
    """A curvature whose variables do not halve the gradient within `refresh` iterations is dropped for the rest of the
    solve (as on one example per speaker, where the softmax is near one-hot): a deliberately wrong one (input factor
    eigenvalues 1e-8 to 1e4, randomly rotated) then costs about `refresh` more iterations than the plain solve, where
    kept it never reaches the tolerance."""
    x, y = _ill_conditioned()
    d, c = x.shape[1], int(y.max()) + 1
    g = torch.Generator().manual_seed(3)
    Q, _ = torch.linalg.qr(torch.randn(d + 1, d + 1, generator=g, dtype=torch.float64))
    wrong = Q @ torch.diag(torch.logspace(-8, 4, d + 1, dtype=torch.float64)) @ Q.T

    def solve(refresh):
        W = torch.zeros(d, c, dtype=torch.float64, requires_grad=True)
        b = torch.zeros(c, dtype=torch.float64, requires_grad=True)
        pre = None if refresh is None else Preconditioned(
            W, b, lambda: Kronecker(wrong, torch.eye(c, dtype=torch.float64), 1e-6), refresh=refresh)
        return solve_l2([W, b], lambda: [F.cross_entropy(x @ W + b, y)], [W], 1e-6, 1e-3, 5000, precondition=pre)

    plain, dropped, kept = solve(None), solve(100), solve(10**9)
    assert plain[1] and dropped[1] and dropped[0] <= plain[0] + 300, (plain, dropped)
    assert not kept[1]
