"""Reproducibility: seeding and the provenance (versions, git commit, device) recorded with every result."""
from __future__ import annotations

import datetime as _dt
import platform
import random
import subprocess
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import numpy as np
import torch

from core import __version__

REPO_ROOT = Path(__file__).resolve().parent.parent


def seed_everything(seed: int) -> torch.Generator:
    """Seed python, numpy and torch; return a torch Generator seeded the same way for local use."""
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)
    g = torch.Generator()
    g.manual_seed(seed)
    return g


# torch threads of every forward pass of an upstream on a CPU in the harness (feature extraction, fine-tuning),
# whatever the machine's cores: a threaded matrix product or reduction rounds differently on another thread count
# (the built-in corpus's dev features of mel, mockingjay and mockingjay_random differ in 0.05-0.10 % of their float16
# values between 1 and 2 threads, results/extract_threads.json), and other features train other rows. 2: the count
# the rows in results/ were computed with (2-core machines); a machine with more cores extracts several batches side
# by side (benchmark.cache.extract.EXTRACT_WORKERS)
UPSTREAM_THREADS = 2


@contextmanager
def deterministic_kernels(device: torch.device | str) -> Iterator[None]:
    """torch's deterministic algorithms inside, on a CPU (the process-wide setting, restored after). Pretraining on 2
    threads trained other weights at every run of the same command without them, from its first steps (mockingjay:small,
    60 steps: another held-out loss each time), and the same bits with them, at the same speed; on 1 thread both ways
    were the same. On CUDA nothing changes: its deterministic cuBLAS needs a workspace setting made before the process
    starts, and bit-identical results are not promised there (docs/architecture.md, "Determinism")."""
    if torch.device(device).type != "cpu":
        yield
        return
    before = torch.are_deterministic_algorithms_enabled()
    torch.use_deterministic_algorithms(True)
    try:
        yield
    finally:
        torch.use_deterministic_algorithms(before)


@contextmanager
def torch_threads(n: int) -> Iterator[None]:
    """torch on `n` threads inside (the process-wide setting, restored after, also on an error). One thread where a
    fit's bits must not depend on the machine's core count: LAPACK's threaded eigendecomposition (torch.linalg.eigh)
    returns other bits with 2 threads than with 1 on this project's CPUs, and a whitening fitted with other bits trains
    other probe rows."""
    before = torch.get_num_threads()
    torch.set_num_threads(n)
    try:
        yield
    finally:
        torch.set_num_threads(before)


@contextmanager
def flush_denormals() -> Iterator[None]:
    """Subnormal floats (below 1.2e-38 in float32) read and written as zero inside, by the CALLING thread's CPU
    (x86 FTZ/DAZ; restored after, also on an error; nothing where the CPU cannot). Arithmetic on subnormals takes a
    slow path: a softmax of large logits underflows to them, as in a weakly regularised logistic-regression fit in
    float32 (perf/certificate_starts.py --compare kernels measures the certificate's). A subnormal probability is
    below anything a float32 sum of probabilities near 1 can hold, so the values of such a fit do not move. The mode
    is per thread: torch's other intra-op threads keep theirs, so it covers a computation on one torch thread."""
    on = torch.set_flush_denormal(True)
    try:
        yield
    finally:
        if on:
            torch.set_flush_denormal(False)


def default_device() -> torch.device:
    return torch.device("cuda" if torch.cuda.is_available() else "cpu")


def fast_bfloat16(device: torch.device) -> bool:
    """Whether `device` multiplies bfloat16 matrices natively: a CUDA GPU with bf16 support, or a CPU with AMX or
    AVX512-BF16 (there oneDNN's bf16 GEMM is several times as fast as float32; elsewhere bf16 is emulated and
    slower). Probe groups (downstream.groups) and pretraining's "auto" precision (pretrain.train) compute in bfloat16
    where it holds."""
    if device.type == "cuda":
        return torch.cuda.is_bf16_supported()
    cpu = torch.cpu
    return any(getattr(cpu, name, lambda: False)() for name in ("_is_amx_tile_supported", "_is_avx512_bf16_supported"))


def git_commit() -> str:
    try:
        out = subprocess.run(["git", "rev-parse", "--short=12", "HEAD"], cwd=REPO_ROOT,
                             capture_output=True, text=True, timeout=5)
        commit = out.stdout.strip() or "unknown"
        dirty = subprocess.run(["git", "status", "--porcelain", "--untracked-files=no"], cwd=REPO_ROOT,
                               capture_output=True, text=True, timeout=5).stdout.strip()
        return commit + ("+dirty" if dirty else "")
    except (OSError, subprocess.SubprocessError):
        return "unknown"


def provenance(device: torch.device | str | None = None) -> dict[str, str]:
    """Versions and environment to store beside a result or checkpoint."""
    import torchaudio

    dev = torch.device(device) if device is not None else default_device()
    name = torch.cuda.get_device_name(dev) if dev.type == "cuda" else f"cpu x{torch.get_num_threads()}"
    return {
        "toolkit_version": __version__,
        "git_commit": git_commit(),
        "torch": torch.__version__,
        "torchaudio": torchaudio.__version__,
        "python": platform.python_version(),
        "device": name,
        "date": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
    }
