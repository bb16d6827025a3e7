"""The CTC loss's forward and backward on the CTC probes' minibatches: torch's CPU kernel against the scaled kernel
that phone_ctc uses on the CPU (downstream.ctcloss), side by side in one process, and both against torch in float64.

    .venv/bin/python perf/ctc_loss.py --corpus data/synth --out results/ctc_loss.json

The minibatches are the main job's (benchmark.plan.presets: 16 training utterances a step, padded to the longest):
the corpus's own training utterances in a seeded order, their frame counts at 10 ms (log-mel, the 10-ms
Transformers) and at 30 ms (3 frames stacked: the reference checkpoints, mel:stack3), their own phone sequences
(downstream.tasks.PHONE_SEQUENCES), and log-probabilities of random logits over the phones and the blank. The
kernels' work depends on the shapes, not on the values. Each kernel takes the same batches, best of `--repeats`
passes, 1 torch thread; the ratio is torch's seconds over the scaled kernel's.
"""
from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from torch.nn.utils.rnn import pad_sequence

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from benchmark.plan.presets import CTC_PROBE  # noqa: E402
from core.frames import stft_rule  # noqa: E402
from core.io import atomic_write_json  # noqa: E402
from core.repro import provenance  # noqa: E402
from corpora.manifest import load_corpus  # noqa: E402
from downstream.ctcloss import scaled_ctc_loss  # noqa: E402
from downstream.data import split_labels  # noqa: E402
from downstream.tasks import CTC_BLANK, PHONE_SEQUENCES  # noqa: E402


def batches(corpus, stack: int, n_batches: int, batch_size: int, seed: int):
    """(T, B, C) log-probabilities (a leaf), padded targets, frame counts, target lengths: the first `n_batches`."""
    rule = stft_rule(stack=stack)
    utts = corpus.utterances("train")
    seqs = split_labels(corpus, utts, "train", PHONE_SEQUENCES, rule).seqs
    n_out = len(PHONE_SEQUENCES.classes(corpus)) + 1
    order = torch.randperm(len(utts), generator=torch.Generator().manual_seed(seed)).tolist()
    g = torch.Generator().manual_seed(seed + 1)
    out = []
    for k in range(n_batches):
        idx = order[k * batch_size:(k + 1) * batch_size]
        lengths = torch.tensor([rule.num_frames_of(utts[i].num_samples, utts[i].sample_rate) for i in idx])
        logits = torch.randn(int(lengths.max()), len(idx), n_out, generator=g)
        ys = [torch.from_numpy(seqs[i] + 1) for i in idx]
        out.append((logits.log_softmax(-1), pad_sequence(ys, batch_first=True),
                    lengths, torch.tensor([len(y) for y in ys])))
    return out


def torch_kernel(lp, y, il, tl):
    return F.ctc_loss(lp, y, il, tl, blank=CTC_BLANK, reduction="none", zero_infinity=True)


def scaled_kernel(lp, y, il, tl):
    return scaled_ctc_loss(lp, y, il, tl, CTC_BLANK)


def run(kernel, data, dtype=torch.float32):
    """Every batch's losses and gradients, and the seconds of the forward and backward passes."""
    losses, grads, seconds = [], [], 0.0
    for lp, y, il, tl in data:
        x = lp.to(dtype, copy=True).requires_grad_(True)  # a fresh leaf: no gradient accumulates across runs
        t0 = time.perf_counter()
        loss = kernel(x, y, il, tl)
        loss.sum().backward()
        seconds += time.perf_counter() - t0
        losses.append(loss.detach().double())
        grads.append(x.grad.double())
    return losses, grads, seconds


def max_rel(a: list[torch.Tensor], b: list[torch.Tensor]) -> float:
    return max(float((x - y).abs().max() / y.abs().max()) for x, y in zip(a, b))


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--corpus", default="data/synth", help="a prepared corpus directory with phone alignments")
    ap.add_argument("--batches", type=int, default=30, help="minibatches timed per frame rate")
    ap.add_argument("--repeats", type=int, default=3, help="passes over the batches; the fastest counts")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--out", type=Path, help="write the figures here as JSON")
    a = ap.parse_args(argv)
    torch.set_num_threads(1)
    corpus = load_corpus(a.corpus)
    batch_size = CTC_PROBE.minibatch.batch_size
    out = {"command": "python perf/ctc_loss.py " + " ".join(argv if argv is not None else sys.argv[1:]),
           "batch_size": batch_size, "threads": 1, "frame_rates": {}, "provenance": provenance(torch.device("cpu"))}
    scaled_kernel(*batches(corpus, 1, 1, 2, a.seed)[0])  # numba compiles (or loads its cache) outside the timing
    for name, stack in (("10ms", 1), ("30ms", 3)):
        data = batches(corpus, stack, a.batches, batch_size, a.seed)
        reference = run(torch_kernel, data, torch.float64)
        best = {}
        for kernel in (torch_kernel, scaled_kernel):
            runs = [run(kernel, data) for _ in range(a.repeats)]
            best[kernel.__name__] = min(r[2] for r in runs)
            losses, grads, _ = runs[0]
            out["frame_rates"].setdefault(name, {}).update({
                f"{kernel.__name__}_ms_per_batch": round(1e3 * best[kernel.__name__] / len(data), 3),
                f"{kernel.__name__}_loss_rel_err_vs_float64": max_rel(losses, reference[0]),
                f"{kernel.__name__}_grad_rel_err_vs_float64": max_rel(grads, reference[1])})
        frames = [int(il.sum()) for _, _, il, _ in data]
        out["frame_rates"][name].update({"batches": len(data), "mean_frames_per_utterance": sum(frames) / len(data)
                                         / batch_size, "torch_over_scaled": round(best["torch_kernel"]
                                                                                  / best["scaled_kernel"], 2)})
        print(f"{name}: torch {out['frame_rates'][name]['torch_kernel_ms_per_batch']:.2f} ms a batch, scaled "
              f"{out['frame_rates'][name]['scaled_kernel_ms_per_batch']:.2f} ms: "
              f"{out['frame_rates'][name]['torch_over_scaled']:.2f}x")
    if a.out:
        atomic_write_json(a.out, out)
        print(f"wrote {a.out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
