"""Cost table: parameters, pretraining throughput (from checkpoint meta) and inference real-time factor measured now."""
from __future__ import annotations

import argparse
import math
import sys
import time
from collections.abc import Iterable
from pathlib import Path

import numpy as np
import pandas as pd
import torch
from tqdm import tqdm

from benchmark.inputs.upstream import control_architecture
from benchmark.report.tables import fmt_count, fmt_seconds, to_markdown
from core.io import atomic_write_text
from core.repro import provenance, seed_everything
from upstream.checkpoint import read_meta
from upstream.features import corpus_stats
from upstream.registry import build_upstream, ckpt_key, family_of, upstream_identity
from upstream.transformer import count_parameters

COST_COLUMNS: tuple[str, ...] = ("upstream", "preset", "ckpt_hash", "params", "pretrain_frames", "pretrain_seconds",
                                 "pretrain_frames_per_s", "val_l1", "val_l1_mean", "val_l1_interpolate", "infer_rtf",
                                 "infer_audio_seconds", "device", "date")
_ADDED_LATER = ("val_l1", "val_l1_mean", "val_l1_interpolate")


def generated_audio(n_utts: int = 3, seconds: float = 5.0, sample_rate: int = 16_000, seed: int = 0) -> list[torch.Tensor]:
    """Speech-like test signals (harmonic tone with vibrato + noise): timing does not depend on content."""
    g = np.random.default_rng(seed)
    t = np.arange(int(seconds * sample_rate)) / sample_rate
    out = []
    for _ in range(n_utts):
        f0 = 100 + 80 * g.random() + 10 * np.sin(2 * np.pi * 3 * t)
        phase = 2 * np.pi * np.cumsum(f0) / sample_rate
        wav = sum(np.sin(k * phase) / k for k in range(1, 8)) * 0.1 + 0.01 * g.standard_normal(len(t))
        out.append(torch.from_numpy(wav.astype(np.float32)))
    return out


@torch.inference_mode()
def real_time_factor(model: torch.nn.Module, wavs: list[torch.Tensor], device: torch.device, repeats: int = 3) -> float:
    """Seconds of compute per second of audio, one utterance at a time (the median over `repeats` passes)."""
    model.eval().to(device)
    sync = torch.cuda.synchronize if device.type == "cuda" else (lambda: None)
    model(wavs[0][None].to(device), torch.tensor([len(wavs[0])], device=device))  # warm-up (allocations, kernels)
    sync()
    audio_s = sum(len(w) for w in wavs) / model.sample_rate
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        for w in wavs:
            model(w[None].to(device), torch.tensor([len(w)], device=device))
        sync()
        times.append(time.perf_counter() - t0)
    return float(np.median(times)) / audio_s


def _pretrain_meta(ckpt: str | Path | None) -> dict[str, float]:
    """Pretraining cost and final held-out masked L1 with its trivial-predictor yardsticks, from checkpoint meta."""
    if ckpt is None:
        return {"pretrain_frames": 0.0, "pretrain_seconds": 0.0, "val_l1": math.nan, "val_l1_mean": math.nan,
                "val_l1_interpolate": math.nan}
    meta = read_meta(ckpt)
    base = meta.get("val_baselines") or {}
    # Checkpoints from before a key was recorded (or imported from s3prl) report it as unknown.
    get = lambda d, k: math.nan if d.get(k) is None else float(d[k])  # noqa: E731
    return {"pretrain_frames": get(meta, "pretrain_frames"), "pretrain_seconds": get(meta, "pretrain_seconds"),
            "val_l1": get(meta, "val_loss"), "val_l1_mean": get(base, "mean"),
            "val_l1_interpolate": get(base, "interpolate")}


def measure_costs(specs_and_ckpts: Iterable[tuple[str, str | Path | None]], out_csv: str | Path,
                  device: str | torch.device | None = None, seconds: float = 5.0, n_utts: int = 3) -> pd.DataFrame:
    """Measure every (spec, checkpoint-or-None) pair and write `out_csv` atomically; return the table."""
    dev = torch.device(device) if device is not None else torch.device("cuda" if torch.cuda.is_available() else "cpu")
    seed_everything(0)
    wavs = generated_audio(n_utts, seconds)
    prov = provenance(dev)
    rows = []
    items = list(specs_and_ckpts)
    if not items:
        raise ValueError("measure_costs: no upstreams given")
    # a random-init control copies the architecture of its family's checkpoint here (else the shipped reference's),
    # as in the benchmark, so its row costs the model it controls for
    family_ckpts = {ckpt_key(spec): str(ckpt) for spec, ckpt in items if ckpt is not None}
    for spec, ckpt in tqdm(items, desc="cost", unit="upstream"):
        fam, preset = family_of(spec)
        feature = encoder = None
        if ckpt is None and fam.takes_front_end:
            feature = fam.front_end(preset)
            if fam.architecture_from is not None:
                feature, encoder = control_architecture(spec, family_ckpts, Path("runs/pretrain"), False, False)
            if feature.norm == "corpus" and not feature.has_stats:
                # Timing only: statistics of the test signal stand in for corpus ones (same arithmetic cost).
                feature = feature.with_stats(*corpus_stats(feature, wavs))
        model = build_upstream(spec, ckpt=ckpt, feature=feature, encoder=encoder)
        pre = _pretrain_meta(ckpt if fam.pretrainable else None)  # only the toolkit's checkpoints record pretraining
        secs = pre["pretrain_seconds"]
        rows.append({**upstream_identity(spec, ckpt, model), "params": count_parameters(model), **pre,
                     "pretrain_frames_per_s": pre["pretrain_frames"] / secs if secs > 0 else math.nan,
                     "infer_rtf": real_time_factor(model, wavs, dev), "infer_audio_seconds": n_utts * seconds,
                     "device": prov["device"], "date": prov["date"]})
    df = pd.DataFrame(rows, columns=list(COST_COLUMNS))
    atomic_write_text(out_csv, df.to_csv(index=False))
    return df


def read_costs(path: str | Path) -> pd.DataFrame:
    path = Path(path)
    df = pd.read_csv(path, dtype={"ckpt_hash": str})
    missing = [c for c in COST_COLUMNS if c not in df.columns and c not in _ADDED_LATER]
    if missing:
        raise ValueError(f"{path}: not a cost table, missing columns {missing}")
    for c in _ADDED_LATER:  # tables written before these columns existed: unknown
        if c not in df.columns:
            df[c] = math.nan
    return df[list(COST_COLUMNS)]


def cost_display(df: pd.DataFrame) -> pd.DataFrame:
    """The cost table's cells as text, as REPORT.md and the HTML site show them (same index as `df`)."""

    return pd.DataFrame({
        "upstream": df["upstream"] + ":" + df["preset"], "params": df["params"].map(fmt_count),
        "pretrain frames": df["pretrain_frames"].map(fmt_count), "pretrain time": df["pretrain_seconds"].map(fmt_seconds),
        "pretrain throughput (frames/s)": df["pretrain_frames_per_s"].map(lambda v: "-" if pd.isna(v) else f"{v:,.0f}"),
        "held-out masked L1 (mean / interpolation)": [
            "-" if pd.isna(v) else f"{v:.3f}" + ("" if pd.isna(m) else f" ({m:.3f} / {i:.3f})")
            for v, m, i in zip(df["val_l1"], df["val_l1_mean"], df["val_l1_interpolate"])],
        "inference RTF (s compute / s audio)": df["infer_rtf"].map(lambda v: f"{v:.4f}"),
        "device": df["device"]}, index=df.index)


COST_NOTE = ("Held-out masked L1: the pretraining's final validation loss, and in brackets the same loss for two trivial "
             "predictors on the same masks (the corpus mean; a line between the nearest unmasked frames). A model above "
             "the interpolation figure has not yet learned to use its neighbours.")


def rtf_note(df: pd.DataFrame) -> str:
    return (f"RTF measured one utterance at a time on {df['infer_audio_seconds'].iloc[0]:g} s of generated audio, "
            f"median of 3 passes, {df['date'].iloc[0]}.")


def cost_markdown(df: pd.DataFrame) -> str:
    return to_markdown(cost_display(df)) + f"\n{rtf_note(df)} {COST_NOTE}\n"


def _parse_ckpt(arg: str) -> tuple[str, Path]:
    spec, sep, path = arg.partition("=")
    if not sep or not path:
        raise argparse.ArgumentTypeError(f"--ckpt expects SPEC=PATH (e.g. mockingjay=ckpt/mj, "
                                         f"wav2vec2_base=wav2vec2_fairseq_base_ls960.pth), got {arg!r}")
    return spec, Path(path)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description="Measure parameters, pretraining throughput and inference RTF.")
    p.add_argument("--upstream", action="append", default=[], help="checkpoint-free spec (mel, mockingjay_random)")
    p.add_argument("--ckpt", action="append", default=[], type=_parse_ckpt,
                   help="SPEC=PATH (checkpoint directory, torchaudio .pth, s3prl:NAME=.ckpt), repeatable")
    p.add_argument("--out", type=Path, default=Path("results/cost.csv"))
    p.add_argument("--device", default=None, help="cpu or cuda (default: cuda when available)")
    p.add_argument("--seconds", type=float, default=5.0, help="length of each of the 3 generated utterances")
    args = p.parse_args(argv)
    items = [(s, None) for s in args.upstream] + list(args.ckpt)
    try:
        df = measure_costs(items, args.out, device=args.device, seconds=args.seconds)
    except (FileNotFoundError, ValueError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    print(cost_markdown(df))
    print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
