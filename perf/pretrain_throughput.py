"""Training-step throughput (frames/s, forward+backward+AdamW) of our encoder vs s3prl's TransformerModel.

Both models get the same config, batch, sequence length, head size, loss and optimizer, so the
difference is the model code. Also reports our achieved model FLOP/s as a fraction of a torch.mm peak
measured in the same run and dtype. Not a test: run it on a quiet machine (see `uptime`).

    python perf/pretrain_throughput.py --batch 8 --frames 500 --out results/pretrain_throughput.json
"""
from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
from core.io import atomic_write_json  # noqa: E402
from core.repro import provenance  # noqa: E402
from pretrain.masking import masked_l1  # noqa: E402
from pretrain.model import MaskedAcousticModel, make_optimizer  # noqa: E402
from upstream.transformer import EncoderConfig  # noqa: E402


def step_flops(cfg: EncoderConfig, B: int, T: int, out_dim: int) -> float:
    """Matmul FLOPs of one training step (backward = 2x forward), the usual MFU convention."""
    H, F = cfg.hidden_size, cfg.intermediate_size
    per_frame = 2 * cfg.input_dim * H + cfg.num_layers * (2 * 4 * H * H + 2 * 2 * H * F + 2 * 2 * T * H)
    per_frame += 2 * (H * H + H * out_dim)  # prediction head
    return 3.0 * per_frame * B * T


def matmul_peak(dtype: torch.dtype, n: int = 2048, reps: int = 5) -> float:
    a, b = torch.randn(n, n, dtype=dtype), torch.randn(n, n, dtype=dtype)
    torch.mm(a, b)
    best = float("inf")
    for _ in range(reps):
        t = time.perf_counter()
        torch.mm(a, b)
        best = min(best, time.perf_counter() - t)
    return 2 * n**3 / best


class S3prlMAM(torch.nn.Module):
    """s3prl's TransformerModel + TransformerSpecPredictionHead, fed as its pretraining pipeline feeds it."""

    def __init__(self, cfg: EncoderConfig, out_dim: int) -> None:
        super().__init__()
        from s3prl.upstream.mockingjay import model as s3m

        conf = s3m.TransformerConfig({
            "hidden_size": cfg.hidden_size, "num_hidden_layers": cfg.num_layers, "num_attention_heads": cfg.num_heads,
            "hidden_act": "gelu", "intermediate_size": cfg.intermediate_size, "hidden_dropout_prob": cfg.dropout,
            "attention_probs_dropout_prob": cfg.attention_dropout, "initializer_range": cfg.initializer_range,
            "layer_norm_eps": cfg.layer_norm_eps, "share_layer": cfg.share_layers, "pre_layer_norm": False})
        self.model = s3m.TransformerModel(conf, input_dim=cfg.input_dim)
        self.head = s3m.TransformerSpecPredictionHead(conf, output_dim=out_dim)
        from upstream.transformer import sinusoidal_positions

        self.register_buffer("pos", sinusoidal_positions(24000, cfg.hidden_size), persistent=False)

    def forward(self, x: torch.Tensor, lengths: torch.Tensor) -> torch.Tensor:
        B, T, _ = x.shape
        mask = (torch.arange(T)[None] < lengths[:, None]).to(x.dtype)
        hidden = self.model(x, self.pos[:T].expand(B, T, -1), mask, output_all_encoded_layers=False)
        return self.head(hidden)[0]


def make_step(model: torch.nn.Module, x, lengths, mask, amp: torch.dtype | None):
    opt = make_optimizer(model, 2e-4, (0.9, 0.999), 1e-8, 0.01)
    model.train()

    def step() -> None:
        with torch.autocast("cpu", dtype=amp or torch.bfloat16, enabled=amp is not None):
            pred = model(x, lengths)
        masked_l1(pred, x, mask).backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 5.0)
        opt.step()
        opt.zero_grad(set_to_none=True)
    return step


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--layers", type=int, default=3)
    ap.add_argument("--hidden", type=int, default=768)
    ap.add_argument("--heads", type=int, default=12)
    ap.add_argument("--ffn", type=int, default=3072)
    ap.add_argument("--batch", type=int, default=8)
    ap.add_argument("--frames", type=int, default=500)
    ap.add_argument("--rounds", type=int, default=4, help="timed rounds, alternating the two models")
    ap.add_argument("--steps", type=int, default=2, help="training steps per round")
    ap.add_argument("--dtypes", default="float32,bfloat16")
    ap.add_argument("--threads", type=int, default=None)
    ap.add_argument("--out", type=Path, default=None, help="write the figures as JSON here")
    args = ap.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    cfg = EncoderConfig(input_dim=80, hidden_size=args.hidden, num_layers=args.layers, num_heads=args.heads,
                        intermediate_size=args.ffn)
    B, T = args.batch, args.frames
    torch.manual_seed(0)
    x, lengths = torch.randn(B, T, 80), torch.full((B,), T)
    mask = torch.rand(B, T) < 0.15
    flops = step_flops(cfg, B, T, 80)
    results = {"config": vars(args) | {"out": str(args.out)}, "flops_per_step": flops,
               "load_before": os.getloadavg(), "provenance": provenance("cpu"), "by_dtype": {}}
    for name in args.dtypes.split(","):
        amp = None if name == "float32" else getattr(torch, name)
        steps = {"ours": make_step(MaskedAcousticModel(cfg, 80), x, lengths, mask, amp),
                 "s3prl": make_step(S3prlMAM(cfg, 80), x, lengths, mask, amp)}
        for s in steps.values():
            s()  # warm-up (allocator, kernels)
        times: dict[str, list[float]] = {k: [] for k in steps}
        for _ in range(args.rounds):
            for k, s in steps.items():
                t = time.perf_counter()
                for _ in range(args.steps):
                    s()
                times[k].append((time.perf_counter() - t) / args.steps)
        peak = matmul_peak(amp or torch.float32)
        med = {k: statistics.median(v) for k, v in times.items()}
        r = {"peak_flops": peak, "step_seconds": med,
             "frames_per_s": {k: B * T / v for k, v in med.items()},
             "speedup_vs_s3prl": med["s3prl"] / med["ours"],
             "mfu": {k: flops / v / peak for k, v in med.items()}}
        results["by_dtype"][name] = r
        print(f"{name:9s} ours {r['frames_per_s']['ours']:8.0f} frames/s  s3prl {r['frames_per_s']['s3prl']:8.0f} "
              f"frames/s  speedup {r['speedup_vs_s3prl']:.2f}x  matmul peak {peak / 1e9:6.0f} GFLOP/s  "
              f"ours {100 * r['mfu']['ours']:.0f}% / s3prl {100 * r['mfu']['s3prl']:.0f}% of peak", flush=True)
    results["load_after"] = os.getloadavg()
    if args.out:
        atomic_write_json(args.out, results)


if __name__ == "__main__":
    main()
