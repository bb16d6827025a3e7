"""The scaled CPU CTC kernel against torch's log-space CTC loss in float64: values, gradients, the edge cases."""
from __future__ import annotations

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from downstream.ctcloss import scaled_ctc_loss
from downstream.tasks import CTC_BLANK, ctc_loss


def _torch64(lp: torch.Tensor, y: torch.Tensor, il: torch.Tensor, tl: torch.Tensor) -> torch.Tensor:
    return F.ctc_loss(lp.double(), y, il, tl, blank=CTC_BLANK, reduction="none", zero_infinity=True)


def _batch(seed: int, batch: int = 6, frames: int = 40, classes: int = 7, max_target: int = 12):
    g = torch.Generator().manual_seed(seed)
    logits = torch.randn(batch, frames, classes, generator=g) * 3
    il = torch.randint(frames // 3, frames + 1, (batch,), generator=g)
    il[0] = frames
    tl = torch.randint(0, max_target + 1, (batch,), generator=g)
    y = torch.randint(1, classes, (batch, max_target), generator=g)
    y[1, :4] = 3  # repeats need a blank between them
    tl[1] = max(int(tl[1]), 4)
    return logits, y, il, tl


def _value_and_grad(fn, logits: torch.Tensor, y, il, tl, weights: torch.Tensor):
    x = logits.clone().requires_grad_(True)
    loss = fn(x.log_softmax(-1).transpose(0, 1), y, il, tl)  # (T, B, C) as a transposed view, as the CTC engine passes it
    (loss.double() * weights).sum().backward()
    return loss.detach().double(), x.grad.double()


@pytest.mark.parametrize("seed", range(5))
def test_the_scaled_kernel_matches_torch_in_float64_values_and_gradients(seed: int) -> None:
    logits, y, il, tl = _batch(seed)
    w = torch.rand(len(il), generator=torch.Generator().manual_seed(99), dtype=torch.float64)
    ours = _value_and_grad(lambda *a: scaled_ctc_loss(*a, CTC_BLANK), logits, y, il, tl, w)
    ref = _value_and_grad(_torch64, logits, y, il, tl, w)
    torch.testing.assert_close(ours[0], ref[0], rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(ours[1], ref[1], rtol=1e-4, atol=1e-6)
    for b, n in enumerate(il.tolist()):
        assert ours[1][b, n:].abs().sum() == 0  # padding gets no gradient ...
        assert (ours[1][b, :n].abs().sum() > 0) == (ours[0][b] > 0)  # ... nor an impossible target (loss 0)


def test_impossible_targets_get_zero_loss_and_gradient_as_torchs_zero_infinity() -> None:
    logits = torch.randn(3, 5, 4)
    y = torch.tensor([[1, 2, 3, 0, 0, 0], [1, 1, 1, 0, 0, 0], [1, 2, 3, 1, 2, 3]])
    il, tl = torch.tensor([5, 4, 5]), torch.tensor([3, 3, 6])  # 3 repeats need 5 frames; 6 labels need 6
    w = torch.ones(3, dtype=torch.float64)
    ours = _value_and_grad(lambda *a: scaled_ctc_loss(*a, CTC_BLANK), logits, y, il, tl, w)
    ref = _value_and_grad(_torch64, logits, y, il, tl, w)
    assert ours[0][1:].tolist() == [0.0, 0.0] and ours[1][1:].abs().max() == 0
    torch.testing.assert_close(ours[0], ref[0], rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(ours[1], ref[1], rtol=1e-4, atol=1e-6)


def test_an_empty_target_is_all_blanks() -> None:
    lp = torch.randn(1, 9, 5).log_softmax(-1)
    loss = scaled_ctc_loss(lp.transpose(0, 1), torch.zeros(1, 1, dtype=torch.long), torch.tensor([9]),
                           torch.tensor([0]), CTC_BLANK)
    assert loss is not None
    torch.testing.assert_close(loss.double(), -lp[0, :, CTC_BLANK].double().sum().view(1), rtol=1e-6, atol=1e-6)


def test_an_underflowing_lattice_is_left_to_torchs_log_space_kernel() -> None:
    lp = torch.full((6, 1, 3), -1e4)
    lp[:, 0, 2] = 0.0  # every frame is sure of class 2, and the target is class 1 on every path: exp(-1e4) = 0
    y, il, tl = torch.tensor([[1]]), torch.tensor([6]), torch.tensor([1])
    assert scaled_ctc_loss(lp, y, il, tl, CTC_BLANK) is None
    ref = F.ctc_loss(lp, y, il, tl, blank=CTC_BLANK, reduction="none", zero_infinity=True)
    assert torch.isfinite(ref).all()
    torch.testing.assert_close(ctc_loss(lp, y, il, tl), ref / 1.0)


def test_the_compiled_kernel_is_its_python_function_which_numpy_bounds_checks() -> None:
    """numba does not check indices; the same function run by Python does (an index past a lattice array's end raises)."""
    from downstream.ctcloss import _lattice

    logits, y, il, tl = _batch(7, batch=3, frames=20, classes=5, max_target=6)
    lp = logits.log_softmax(-1).transpose(0, 1).numpy()
    out = []
    for kernel in (_lattice, _lattice.py_func):
        grad, loss = np.zeros(lp.shape, np.float32), np.zeros(lp.shape[1])
        status = kernel(lp, y.numpy(), il.numpy(), tl.numpy(), CTC_BLANK, grad, loss)
        out.append((status, loss, grad))
    for a, b in zip(*out):
        np.testing.assert_allclose(a, b, rtol=1e-6, atol=1e-7)
