"""Many frozen probes of one task and mode as ONE batched model: stacked head weights, one matmul for all.

P probes (label fractions x seeds) of the same head architecture keep their weights stacked along a leading
probe axis: a Linear(D, C) head becomes W (P, D, C) and b (P, C), and a forward pass over P different
minibatches is one `torch.baddbmm`. Each probe still has its own initialisation (built from its own seed),
gradient, clipping, learning rate, optimiser state and best state; a finished probe leaves the stack
(`keep`) so the ones still training do not pay for it. The inputs are whitened rows (downstream.feeds).

The matmuls run in `compute` precision: bfloat16 on hardware with bfloat16 matrix units (core.repro.fast_bfloat16), else
float32; the weights, their gradients and the optimiser stay float32, and training logits come back float32 (an
evaluation takes them in the compute dtype, to decode).
"""
from __future__ import annotations

from typing import Literal

import torch
from torch import Tensor, nn

from downstream.config import SGD, AdamW, NaturalSGD


def span(idx: Tensor) -> slice | None:
    """The slice `idx` (sorted positions) covers when they are contiguous, else None. The probes that step together
    usually are: a group lists its probes by label fraction, and the larger subsets have rows in more of a chunk's
    minibatches, so the probes still stepping late in a chunk are the last ones."""
    n = len(idx)
    if n == 0:
        return None
    a = int(idx[0])
    return slice(a, a + n) if int(idx[-1]) - a == n - 1 else None


def probes_of(t: Tensor, idx: Tensor) -> Tensor:
    """t's probes at positions `idx` (leading axis): a view where they are contiguous (no copy of the weights, and
    the same values as a gather), else a gather."""
    sl = span(idx)
    if sl is None:
        return t.index_select(0, idx.to(t.device))
    return t if (sl.start, sl.stop) == (0, len(t)) else t[sl]


class _BitReLU(torch.autograd.Function):
    """ReLU in place on bfloat16 activations, computed on their bits: a bfloat16 whose sign bit is set (a negative
    number or -0) is a negative int16, so clamping the int16 view at 0 zeroes exactly the values ReLU zeroes, and
    leaves every other value's bits as they are. The same values as torch.relu_ (which keeps -0 where this gives +0,
    an equal value; tests/test_engine.py); torch's own bfloat16 clamp is several times slower on this project's
    CPUs, the costliest elementwise pass of an MLP step (docs/benchmark.md). Its backward is torch's ReLU backward
    (the gradient where the output is positive)."""

    @staticmethod
    def forward(ctx, x: Tensor) -> Tensor:  # type: ignore[override]
        x.view(torch.int16).clamp_min_(0)
        ctx.mark_dirty(x)
        ctx.save_for_backward(x)
        return x

    @staticmethod
    def backward(ctx, grad: Tensor) -> Tensor:  # type: ignore[override]
        (y,) = ctx.saved_tensors
        return torch.ops.aten.threshold_backward(grad, y, 0)


def relu_(h: Tensor) -> Tensor:
    """torch.relu_, on the bits for bfloat16 (`_BitReLU`)."""
    return _BitReLU.apply(h) if h.dtype == torch.bfloat16 else torch.relu_(h)


def shared_matmul(x: Tensor, W: Tensor) -> Tensor:
    """Rows x (n, K) shared by P probes (evaluation) times each probe's W (P, K, N) -> (P, n, N).
    torch.matmul broadcasts x to (P, n, K) and multiplies P times; in bfloat16, for an output no wider than the input
    (a linear head's classes), this is ONE (n, K) x (K, P * N) GEMM instead, with the broadcast's bits (oneDNN sums
    each output over K in the same order: tests/test_engine.py), faster on the CPUs measured (perf/probe_groups.py
    --broadcast); its (P, n, N) result is a view of the GEMM's (n, P, N) output, not copied (the bias added next makes
    a new tensor anyway). A wider output (the MLP's 768 hidden units) gains nothing; and in float32 one GEMM sums in
    another blocked order, and float32 rows are the broadcast's: both stay torch.matmul."""
    if x.dtype != torch.bfloat16 or W.shape[2] > W.shape[1]:
        return torch.matmul(x, W)
    P, K, N = W.shape
    return torch.mm(x, W.permute(1, 0, 2).reshape(K, P * N)).view(len(x), P, N).transpose(0, 1)


def _linears(head: nn.Module) -> list[nn.Module]:
    mods = list(head) if isinstance(head, nn.Sequential) else [head]
    for m in mods:
        if not isinstance(m, (nn.Linear, nn.ReLU)):
            raise TypeError(f"a stacked probe head is Linear or a Sequential of Linear and ReLU, got {type(m).__name__}")
    if not isinstance(mods[0], nn.Linear):
        raise TypeError("a stacked probe head starts with a Linear layer")
    return mods


class StackedHeads:
    """The parameters of P probes (a list of leaf tensors, each with the probe axis first) and their forward pass."""

    def __init__(self, heads: list[nn.Module], num_layers: int, mix: bool, device: torch.device,
                 compute: torch.dtype = torch.float32) -> None:
        self.compute = compute
        mods = [_linears(h) for h in heads]
        self.sequential = isinstance(heads[0], nn.Sequential)
        self.ops: list[Literal["linear", "relu"]] = ["linear" if isinstance(m, nn.Linear) else "relu" for m in mods[0]]
        params: list[Tensor] = []
        for j, op in enumerate(self.ops):
            if op == "linear":
                params.append(torch.stack([m[j].weight.detach().T for m in mods]))  # (P, in, out)
                params.append(torch.stack([m[j].bias.detach() for m in mods]))  # (P, out)
        if mix:
            params.append(torch.zeros(len(heads), num_layers))  # weighted sum: zero logits (uniform), trained
        elif num_layers != 1:
            raise ValueError(f"a probe without a weighted sum reads one hidden state, got {num_layers}")
        self.mix = mix
        self.params = [p.to(device).requires_grad_(True) for p in params]

    @property
    def size(self) -> int:
        return len(self.params[0])

    def keep(self, idx: Tensor) -> None:
        """Keep probes `idx` (positions in the stack) only, in that order."""
        self.params = [p.detach().index_select(0, idx).requires_grad_(True) for p in self.params]

    def forward(self, x: Tensor, params: list[Tensor] | None = None, float32: bool = True) -> Tensor:
        """Logits of every probe. x: (P, B, L, D) a minibatch per probe, or (n, L, D) rows shared by all probes
        (evaluation); -> (P, B, C) or (P, n, C), in float32 whatever x is stored in, or with `float32` False in the
        compute dtype (an argmax needs no float32 copy: bfloat16 -> float32 is exact and keeps the order)."""
        ct = self.compute
        params = self.params if params is None else params
        x = x.to(ct)
        shared = x.dim() == 3
        W, b = params[0], params[1].to(ct)
        P, L, D = len(W), x.shape[-2], x.shape[-1]
        if self.mix and W.shape[2] <= D:
            # a narrow first layer takes the mix: sum_l w_l x_l @ W = [x_1 .. x_L] @ [w_1 W; ..; w_L W], one GEMM
            A = (params[-1].softmax(-1)[:, :, None, None] * W[:, None]).reshape(P, L * D, -1).to(ct)
            h = shared_matmul(x.reshape(-1, L * D), A) if shared else torch.bmm(x.reshape(P, -1, L * D), A)
            h = h + b[:, None]
        else:
            if self.mix:  # mix first: the first layer is wider than the input
                w = params[-1].softmax(-1).to(ct)
                z = torch.einsum("pl,nld->pnd", w, x) if shared else torch.einsum("pl,pbld->pbd", w, x)
            else:
                z = x[..., 0, :]
            W = W.to(ct)
            h = shared_matmul(z, W) + b[:, None] if z.dim() == 2 else torch.baddbmm(b[:, None], z, W)
        k = 2
        for op in self.ops[1:]:
            if op == "relu":
                h = relu_(h)  # in place: its backward reads the output only
            else:
                h = torch.baddbmm(params[k + 1][:, None].to(ct), h, params[k].to(ct))
                k += 2
        return h.float() if float32 else h

    def products(self, rows: int, width: int, train: bool) -> list[tuple[int, int, int]]:
        """(m, k, n) of every matrix product `forward` (and with `train` its backward) computes for ONE probe on
        `rows` rows of `num_layers` hidden states of `width`: a product costs m * k * n multiply-adds. The first
        layer's input needs no gradient (the rows are frozen features) but a weighted sum mixed first does (its
        mix weights). The cost model of perf/probe_floor.py, checked against torch's FLOP counter
        (tests/test_engine.py)."""
        outs = [int(W.shape[2]) for W in self.params[0: 2 * self.ops.count("linear"): 2]]  # (P, in, out) weights
        L = int(self.params[-1].shape[1]) if self.mix else 1
        folded = self.mix and outs[0] <= width  # as `forward`: the mix folded into the first layer, one (L*D) GEMM
        k = L * width if folded else width
        out: list[tuple[int, int, int]] = []
        if self.mix and not folded:  # the mix first: (1, L) x (L, rows * D), and its weights' gradient
            out += [(1, L, rows * width)] + ([(1, rows * width, L)] if train else [])
        for j, n in enumerate(outs):
            out.append((rows, k, n))
            if train:
                out.append((k, rows, n))  # weight gradient
                if j > 0 or (self.mix and not folded):
                    out.append((rows, n, k))  # input gradient: an earlier layer, or the mix weights, need it
            k = n
        return out

    def layer_weights(self, params: list[Tensor], p: int) -> list[float] | None:
        return [float(v) for v in params[-1][p].detach().softmax(0)] if self.mix else None

    def state_of(self, params: list[Tensor], p: int) -> dict[str, Tensor]:
        """Probe p's weights in the single-probe module's key format (downstream.train.Probe): the head acts on
        whitened features, as a fine-tuning probe applies the same whitening itself."""
        out: dict[str, Tensor] = {}
        k = 0
        for j, op in enumerate(self.ops):
            if op == "linear":
                prefix = f"head.{j}." if self.sequential else "head."
                out[prefix + "weight"] = params[k][p].detach().T.contiguous().cpu()
                out[prefix + "bias"] = params[k + 1][p].detach().clone().cpu()
                k += 2
        if self.mix:
            out["featurizer.weights"] = params[-1][p].detach().clone().cpu()
        return out


def clip_per_probe(params: list[Tensor], max_norm: float) -> None:
    """torch.nn.utils.clip_grad_norm_ for every probe of the stack on its own (norm over all its parameters)."""
    sq = sum(p.grad.pow(2).flatten(1).sum(1) for p in params if p.grad is not None)
    scale = (max_norm / (sq.sqrt() + 1e-6)).clamp(max=1.0)
    for p in params:
        if p.grad is not None:
            p.grad.mul_(scale.view(-1, *[1] * (p.dim() - 1)))


class StackedOptimizer:
    """SGD (Nesterov momentum), natural-gradient SGD (downstream.config.NaturalSGD) or AdamW over the stacked
    parameters of `heads`, with a learning rate per probe and a mask of the probes that step (a probe without examples
    in a chunk keeps its weights and its optimiser state)."""

    def __init__(self, kind: Literal["sgd", "ngd", "adamw"], heads: StackedHeads, lr: float, momentum: float = 0.9,
                 weight_decay: float = 0.0, betas: tuple[float, float] = (0.9, 0.999), eps: float = 1e-8,
                 damping: float = 1e-3, fisher_decay: float = 0.95, fisher_rows: int = 512,
                 mix_lr: float | None = None) -> None:
        self.kind, self.momentum, self.weight_decay, self.betas, self.eps = kind, momentum, weight_decay, betas, eps
        self.damping, self.fisher_decay, self.fisher_rows = damping, fisher_decay, fisher_rows
        self.heads = heads
        params = heads.params
        P = len(params[0])
        if kind == "ngd" and heads.ops != ["linear"]:
            raise ValueError("natural-gradient SGD preconditions a linear head (one layer); this head has "
                             f"{heads.ops.count('linear')} linear layers")
        self.lr = torch.full((P,), lr, device=params[0].device)
        # a weighted sum's mix logits under natural-gradient SGD: their own plain-SGD step (scaled with `lr` on decay)
        self.mix_scale = (mix_lr / lr) if (kind == "ngd" and heads.mix and mix_lr is not None) else 1.0
        self.t = torch.zeros(P, device=params[0].device)  # steps taken per probe (AdamW's and NGD's bias corrections)
        self.state = [[torch.zeros_like(p) for _ in range(1 if kind in ("sgd", "ngd") else 2)] for p in params]
        C = int(params[0].shape[-1])
        # NGD: each probe's running average of the softmax covariance (C x C), and the minibatch's, from the loss
        self.fisher = torch.zeros(P, C, C, device=params[0].device) if kind == "ngd" else None
        self._observed: Tensor | None = None
        self._buffers: dict[tuple, tuple[Tensor, Tensor]] = {}  # AdamW's step temporaries, by parameter shape

    @classmethod
    def of(cls, opt: SGD | NaturalSGD | AdamW, heads: StackedHeads) -> "StackedOptimizer":
        """The stacked form of a probe's minibatch optimiser (downstream.config)."""
        if isinstance(opt, SGD):
            return cls("sgd", heads, opt.lr, opt.momentum, opt.weight_decay)
        if isinstance(opt, NaturalSGD):
            return cls("ngd", heads, opt.lr, opt.momentum, damping=opt.damping, fisher_decay=opt.fisher_decay,
                       fisher_rows=opt.fisher_rows, mix_lr=opt.mix_lr)
        if isinstance(opt, AdamW):
            return cls("adamw", heads, opt.lr, 0.0, opt.weight_decay)
        raise ValueError(f"frozen probes train with SGD, NaturalSGD or AdamW, got {type(opt).__name__}")

    @property
    def wants_curvature(self) -> bool:
        """Whether `observe` must be given each step's predictions (natural-gradient SGD)."""
        return self.fisher is not None

    @torch.no_grad()
    def observe(self, logits: Tensor, valid: Tensor) -> None:
        """The predictions of this step's minibatch: logits (A, B, C) of the probes that step next, `valid` (A, B)
        which rows count. Kept for `step`: each probe's softmax covariance over the valid rows among its first
        `fisher_rows`, (diag(sum p) - p^T p) / n. The probabilities are floored at 1e-15 (a change of at most 1e-15
        in an entry): products of smaller ones are subnormal floats, which this project's CPUs multiply many times
        more slowly."""
        logits, valid = logits[:, :self.fisher_rows], valid[:, :self.fisher_rows]
        p = logits.detach().float().softmax(-1).clamp_min_(1e-15) * valid[..., None]
        n = valid.sum(1).clamp_min(1).float()[:, None, None]
        cov = torch.diag_embed(p.sum(1)) - p.transpose(1, 2) @ p
        self._observed = cov / n

    def _scratch(self, p: Tensor) -> tuple[Tensor, Tensor]:
        """Two buffers of p's shape, kept between steps (views of the first len(p) probes of a larger stack)."""
        key = (tuple(p.shape[1:]), p.dtype, p.device)
        held = self._buffers.get(key)
        if held is None or len(held[0]) < len(p):
            held = self._buffers[key] = (torch.empty_like(p), torch.empty_like(p))
        return held[0][:len(p)], held[1][:len(p)]

    def keep(self, idx: Tensor) -> None:
        idx = idx.to(self.lr.device)
        self.lr, self.t = self.lr[idx], self.t[idx]
        self.state = [[s.index_select(0, idx) for s in group] for group in self.state]
        if self.fisher is not None:
            self.fisher = self.fisher.index_select(0, idx)

    def scale_lr(self, position: int, factor: float) -> None:
        self.lr[position] *= factor

    def step(self, active: Tensor) -> None:
        self._masked(self.heads.params, active.to(self.lr.device))

    @torch.no_grad()
    def _masked(self, params: list[Tensor], active: Tensor) -> None:
        """One update of the probes where `active` (P,) is True (all of them: in-place updates; some: the others'
        weights and state are left exactly as they were)."""
        if bool(active.all()):
            self.t.add_(1)
            if self.fisher is not None:
                self._precondition(params, self.fisher, self.t)
            self._step(params, self.state, self.lr, self.t)
            return
        idx = active.nonzero().squeeze(1)
        sl = span(idx)
        sel = idx if sl is None else sl  # contiguous probes are views of the stacks, updated in place
        sub = [p.detach()[sel] for p in params]
        for p, q in zip(sub, params):
            p.grad = None if q.grad is None else q.grad[sel]
        state = [[s[sel] for s in group] for group in self.state]
        self.t[sel] += 1
        fisher = None
        if self.fisher is not None:
            fisher = self.fisher[sel]
            self._precondition(sub, fisher, self.t[sel])
        self._step(sub, state, self.lr[sel], self.t[sel])
        if sl is None:  # gathered copies: scattered back
            for p, q, group, new in zip(sub, params, self.state, state):
                q.detach().index_copy_(0, idx, p)
                for s, n in zip(group, new):
                    s.index_copy_(0, idx, n)
            if fisher is not None:
                self.fisher.index_copy_(0, idx, fisher)

    def _precondition(self, params: list[Tensor], fisher: Tensor, t: Tensor) -> None:
        """Natural gradient of the head (W (A, D, C), b (A, C)) of the stepping probes: their running softmax
        covariance `fisher` (A, C, C) takes this step's (`observe`), and the gradients are multiplied by its damped,
        bias-corrected inverse (a Cholesky solve; the factor is symmetric positive definite once damped)."""
        assert self._observed is not None, "natural-gradient SGD steps after `observe` of the same minibatch"
        cov, self._observed = self._observed, None
        if len(cov) != len(fisher):
            raise RuntimeError(f"observed {len(cov)} probes' predictions, stepping {len(fisher)}")
        fisher.mul_(self.fisher_decay).add_(cov, alpha=1 - self.fisher_decay)
        f = fisher / (1 - self.fisher_decay ** t).view(-1, 1, 1)
        diag = f.diagonal(dim1=1, dim2=2)
        f = f + torch.diag_embed((self.damping * diag.mean(1, keepdim=True)).expand_as(diag))
        chol = torch.linalg.cholesky(f)
        W, b = params[0], params[1]
        gW, gb = W.grad, b.grad
        nW = torch.cholesky_solve(gW.transpose(1, 2), chol).transpose(1, 2)
        nb = torch.cholesky_solve(gb[:, :, None], chol)[:, :, 0]
        W.grad, b.grad = nW, nb

    def _step(self, params: list[Tensor], state: list[list[Tensor]], lr: Tensor, t: Tensor) -> None:
        for k, (p, group) in enumerate(zip(params, state)):
            if p.grad is None:
                continue
            shape = (-1, *[1] * (p.dim() - 1))
            lr_ = lr.view(shape)
            if self.heads.mix and k == len(params) - 1:
                lr_ = lr_ * self.mix_scale  # the mix logits (NGD: their own step; else 1)
            g = p.grad
            p = p.detach()
            if self.kind in ("sgd", "ngd"):
                if self.weight_decay:
                    g = g + self.weight_decay * p
                buf = group[0]
                buf.mul_(self.momentum).add_(g)
                p.sub_(lr_ * (g + self.momentum * buf if self.momentum else buf))
            else:
                m, v = group
                b1, b2 = self.betas
                m.mul_(b1).add_(g, alpha=1 - b1)
                v.mul_(b2).addcmul_(g, g, value=1 - b2)
                tt = t.view(shape)
                if self.weight_decay:
                    p.mul_(1 - lr_ * self.weight_decay)
                # p -= lr * (m / (1 - b1^t)) / (sqrt(v / (1 - b2^t)) + eps), the same operations in the same order,
                # in two reused buffers instead of six fresh tensors of the parameters' size a step
                step, denom = self._scratch(p)
                torch.div(m, 1 - b1 ** tt, out=step)
                torch.div(v, 1 - b2 ** tt, out=denom).sqrt_().add_(self.eps)
                p.sub_(step.mul_(lr_).div_(denom))
