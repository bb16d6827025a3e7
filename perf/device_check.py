"""The GPU check, one command for a machine with CUDA: the CUDA tests, then a short throughput measurement
(pretraining and probe-training frames/s, CPU vs CUDA), written as JSON to results/.

    .venv/bin/python perf/device_check.py                          # tests + measurement, a few minutes
    .venv/bin/python perf/device_check.py --no-tests --out results/device_check_h100.json

What it runs:
- `pytest tests/test_cuda.py`: bf16 autocast vs float32 pretraining, float32 CUDA vs CPU, hidden states and the
  harness's result rows on CUDA vs CPU, 2 nccl ranks vs 1 GPU (where there are 2 GPUs); the differences the tests
  print are recorded beside their bounds, so the bounds can be tightened from a measurement;
- pretraining steps (forward, backward, AdamW) of `mockingjay:small` and `mockingjay:base` in the default recipe's
  shape (frames stacked by 3, Pre-LN, attention dropout 0) on random features: CPU float32, CUDA float32 and CUDA
  bfloat16 autocast at the recipe's batch (16 x 150 stacked steps), and CUDA at 4x that batch;
- frozen-probe steps of the main job's phone_linear probe as the engine runs them (12 probes stacked into one
  model, weighted sum of 4 hidden states, its optimiser settings and batch, float16 rows resident on the device) on
  256- and 768-wide features;
- with --main-job, the main job from empty folders on CUDA (wall time and its summary line).
Frames are 10-ms frames. Without CUDA it says so and exits with status 2 before doing anything.
"""
from __future__ import annotations

import argparse
import json
import platform
import re
import subprocess
import sys
import tempfile
import time
import xml.etree.ElementTree as ET
from pathlib import Path
from typing import Callable

import torch
import torch.nn.functional as F

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
from core.io import atomic_write_json  # noqa: E402
from core.repro import provenance  # noqa: E402
from pretrain.config import DEFAULT_RECIPE, RECIPES  # noqa: E402
from pretrain.masking import mask_batch, masked_l1  # noqa: E402
from pretrain.model import MaskedAcousticModel, make_optimizer  # noqa: E402
from pretrain.train import model_configs  # noqa: E402

PRETRAIN_SPECS = ("mockingjay:small", "mockingjay:base")
PROBE_WIDTHS = (256, 768)  # the small and base presets' hidden size
NO_CUDA = ("perf/device_check.py: no CUDA device here (torch {torch}, CUDA build {cuda}; torch.cuda.is_available() is "
           "False): nothing was checked or measured. Run it on a machine with an NVIDIA GPU; on this one the CUDA "
           "tests skip (pytest tests/test_cuda.py -rs).")


def timed(step: Callable[[], None], device: torch.device, steps: int, warmup: int = 1) -> float:
    """Seconds per call of `step` after `warmup` calls (CUDA work waited for)."""
    sync = torch.cuda.synchronize if device.type == "cuda" else (lambda: None)
    for _ in range(warmup):
        step()
    sync()
    t0 = time.perf_counter()
    for _ in range(steps):
        step()
    sync()
    return (time.perf_counter() - t0) / steps


def pretrain_fps(spec: str, device: str, amp: torch.dtype | None, batch: int, steps: int) -> dict:
    """10-ms frames per second of pretraining steps of `spec` in the default recipe's shape, random features."""
    dev = torch.device(device)
    recipe = RECIPES[DEFAULT_RECIPE]
    _, feature, enc = model_configs(spec, recipe)
    torch.manual_seed(0)
    model = MaskedAcousticModel(enc, feature.feature_dim).to(dev).train()
    opt = make_optimizer(model, recipe.lr, recipe.betas, recipe.eps, recipe.weight_decay)
    T = recipe.crop_frames
    x = torch.randn(batch, T, feature.feature_dim)  # (B, T, D): normalised features
    lengths = torch.full((batch,), T)
    inp, mask = mask_batch(x, lengths, torch.Generator().manual_seed(0), recipe.mask_proportion, recipe.mask_span)
    x, inp, lengths, mask = (t.to(dev) for t in (x, inp, lengths, mask))

    def step() -> None:
        with torch.autocast(dev.type, dtype=amp or torch.bfloat16, enabled=amp is not None):
            pred = model(inp, lengths)
        masked_l1(pred, x, mask).backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), recipe.clip)
        opt.step()
        opt.zero_grad(set_to_none=True)

    sec = timed(step, dev, steps)
    frames = batch * T * feature.downsample
    return {"upstream": spec, "device": device, "dtype": "float32" if amp is None else "bfloat16",
            "batch": f"{batch} x {T} x R{feature.downsample}", "steps": steps, "seconds_per_step": round(sec, 4),
            "frames_per_s": round(frames / sec)}


def probe_fps(width: int, device: str, steps: int, hidden_states: int = 4, probes: int = 12) -> dict:
    """Frames per second of the main job's phone_linear probe (weighted sum) as the engine trains it: `probes`
    probes stacked into one model (downstream.stacked), a minibatch each per step, gathered from rows resident on
    the device (downstream.feeds) in the cache's float16."""
    from benchmark.plan.presets import main_job
    from downstream.stacked import StackedHeads, StackedOptimizer, clip_per_probe
    from downstream.tasks import TASKS

    dev = torch.device(device)
    cfg = main_job().probe_config("phone_linear", False)
    mb = cfg.minibatch
    bs = mb.batch_size
    torch.manual_seed(0)
    heads = [TASKS["phone_linear"].head(width, 38) for _ in range(probes)]
    model = StackedHeads(heads, hidden_states, mix=True, device=dev)
    opt = StackedOptimizer.of(mb.optimizer, model)
    n = 16 * bs
    x = torch.randn(n, hidden_states, width).half().to(dev)  # (rows, L, D) whitened rows, resident, as stored
    y = torch.randint(38, (n,), device=dev)
    g = torch.Generator(device=dev).manual_seed(0)
    active = torch.ones(probes, dtype=torch.bool, device=dev)

    def step() -> None:
        idx = torch.randint(n, (probes * bs,), device=dev, generator=g)
        logits = model.forward(x.index_select(0, idx).view(probes, bs, hidden_states, width))
        loss = F.cross_entropy(logits.reshape(-1, 38), y[idx], reduction="none").view(probes, bs).mean(1).sum()
        for p in model.params:
            p.grad = None
        loss.backward()
        clip_per_probe(model.params, mb.grad_clip)
        opt.step(active)

    sec = timed(step, dev, steps, warmup=3)
    return {"probe": "phone_linear weighted_sum", "width": width, "hidden_states": hidden_states, "device": device,
            "probes": probes, "batch_frames": bs, "steps": steps, "frames_per_s": round(probes * bs / sec)}


def main_job_seconds(device: str) -> dict:
    """The main job from empty folders (corpus, checkpoints' statistics, extraction, probes, report) on `device`,
    in a temporary directory: its wall time and its own summary line."""
    with tempfile.TemporaryDirectory() as tmp:
        t0 = time.perf_counter()
        done = subprocess.run([sys.executable, "run_benchmark.py", "--no-progress", "--device", device,
                               "--data-dir", f"{tmp}/data", "--results-dir", f"{tmp}/results",
                               "--cache-dir", f"{tmp}/cache", "--runs-dir", f"{tmp}/runs"],
                              cwd=ROOT, capture_output=True, text=True)
        sec = time.perf_counter() - t0
    summary = [ln for ln in done.stdout.splitlines() if ln.startswith("done:")]
    print(done.stdout[-3000:], done.stderr[-2000:], sep="\n", flush=True)
    return {"device": device, "exit_status": done.returncode, "seconds": round(sec, 1),
            "summary": summary[-1] if summary else None}


def run_tests(extra: list[str]) -> dict:
    """pytest tests/test_cuda.py: outcome counts and the differences the tests print."""
    with tempfile.TemporaryDirectory() as tmp:
        xml = Path(tmp) / "junit.xml"
        done = subprocess.run([sys.executable, "-m", "pytest", "-q", "-s", "-rs", "-p", "no:cacheprovider",
                               "tests/test_cuda.py", f"--junitxml={xml}", *extra],
                              cwd=ROOT, capture_output=True, text=True)
        suite = next(ET.parse(xml).getroot().iter("testsuite"), None) if xml.is_file() else None
    print(done.stdout[-4000:], done.stderr[-2000:], sep="\n", flush=True)
    counts = {k: int(suite.get(k, 0)) for k in ("tests", "failures", "errors", "skipped")} if suite is not None else {}
    # -q -s: a test's print can follow pytest's progress dots on the same line
    measured = {m[1]: float(m[2]) for m in re.finditer(r"([A-Za-z][^\n:.]*?): largest (?:loss )?difference "
                                                       r"([-+0-9.e]+\d)", done.stdout)}
    rows = re.search(r"result rows CUDA vs CPU: (\{[^}]*\})", done.stdout)
    return {"exit_status": done.returncode, **counts, "measured_differences": measured,
            "result_rows_differences": json.loads(rows[1].replace("'", '"')) if rows else None}


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--out", type=Path, default=ROOT / "results" / "device_check.json")
    ap.add_argument("--no-tests", action="store_true", help="measure only")
    ap.add_argument("--cpu-steps", type=int, default=2, help="timed pretraining steps on the CPU (after 1 warm-up)")
    ap.add_argument("--cuda-steps", type=int, default=20, help="timed pretraining steps on CUDA")
    ap.add_argument("--probe-steps", type=int, default=50)
    ap.add_argument("--main-job", action="store_true", help="also time the main job end to end on CUDA")
    args = ap.parse_args(argv)
    if not torch.cuda.is_available():
        print(NO_CUDA.format(torch=torch.__version__, cuda=torch.version.cuda or "none"), file=sys.stderr)
        return 2
    t0 = time.perf_counter()
    report: dict = {"provenance": provenance("cuda"), "gpu": torch.cuda.get_device_name(0),
                    "gpus": torch.cuda.device_count(), "cuda": torch.version.cuda,
                    "cpu": platform.processor() or platform.machine(), "cpu_threads": torch.get_num_threads()}
    if not args.no_tests:
        report["tests"] = run_tests([])
    bf16 = torch.bfloat16 if torch.cuda.is_bf16_supported() else None
    base_batch = RECIPES[DEFAULT_RECIPE].batch_size
    pre = []
    for spec in PRETRAIN_SPECS:
        runs = [("cpu", None, base_batch, args.cpu_steps), ("cuda", None, base_batch, args.cuda_steps),
                ("cuda", None, 4 * base_batch, args.cuda_steps)]
        if bf16 is not None:
            runs += [("cuda", bf16, base_batch, args.cuda_steps), ("cuda", bf16, 4 * base_batch, args.cuda_steps)]
        for device, amp, batch, steps in runs:
            pre.append(pretrain_fps(spec, device, amp, batch, steps))
            print(json.dumps(pre[-1]), flush=True)
    probes = []
    for width in PROBE_WIDTHS:
        for device in ("cpu", "cuda"):
            probes.append(probe_fps(width, device, args.probe_steps))
            print(json.dumps(probes[-1]), flush=True)
    speedups = {f"pretrain {r['upstream']} {r['dtype']} batch {r['batch']}": round(r["frames_per_s"] / c["frames_per_s"], 1)
                for r in pre if r["device"] == "cuda" for c in pre if c["device"] == "cpu" and c["upstream"] == r["upstream"]}
    speedups.update({f"probe width {r['width']}": round(r["frames_per_s"] / c["frames_per_s"], 1) for r in probes
                     if r["device"] == "cuda" for c in probes if c["device"] == "cpu" and c["width"] == r["width"]})
    for k, v in speedups.items():
        print(f"CUDA / CPU frames/s, {k}: {v}x")
    if args.main_job:
        report["main_job"] = main_job_seconds("cuda")
    report.update(pretrain=pre, probes=probes, cuda_over_cpu=speedups, seconds=round(time.perf_counter() - t0, 1),
                  command=" ".join([Path(sys.executable).name, *sys.argv]))
    atomic_write_json(args.out, report)
    print(f"wrote {args.out}")
    failed = report.get("tests", {}).get("exit_status", 0) != 0
    if failed:
        print("perf/device_check.py: the CUDA tests failed (see above and 'tests' in the JSON)", file=sys.stderr)
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
