"""Attention analysis CLI: maps of one utterance and per-layer statistics over many, for any checkpoints.

python -m analysis.attention --ckpt mockingjay=CKPT --ckpt aalbert=CKPT --audio FILE [--corpus DIR --n 20] --out DIR
"""
from __future__ import annotations

import argparse
import shlex
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import torch
from tqdm import tqdm

from analysis.attention_plots import plot_attention_maps, plot_attention_stats
from analysis.attention_stats import as_numpy_maps, stats_markdown, stats_rows, summarise
from benchmark.inputs.upstream import control_architecture
from core.audio import AudioError, load_audio
from core.io import atomic_write_text
from core.repro import seed_everything
from corpora.manifest import load_corpus
from upstream.features import corpus_stats
from upstream.interface import TransformerUpstream
from upstream.checkpoint import read_meta
from upstream.registry import build_upstream, family_of, load_upstream

LOCAL_MS = 50.0  # local_share counts the attention within +-50 ms of the query (analysis.attention_stats)
DEFAULT_MAX_SECONDS = 15.0  # s3prl encodes Base inputs in chunks of <= 1500 frames (15 s); longer is cropped


@torch.inference_mode()
def attention_of(model: TransformerUpstream, wav: torch.Tensor) -> tuple[list[torch.Tensor], torch.Tensor]:
    """One utterance (S,) -> per-layer (1, heads, T, T) probabilities and lengths (1,), in eval mode."""
    model.eval()
    return model.attention(wav[None], torch.tensor([len(wav)]))


def analyse(models: dict[str, TransformerUpstream], map_wav: torch.Tensor, utterances: list[tuple[str, torch.Tensor]],
            out_dir: Path, map_name: str = "utterance") -> pd.DataFrame:
    """Write attention_maps.png, attention_stats.{csv,md,png} and attention_stats_per_head.csv; return the summary."""
    if not models:
        raise ValueError("analyse: no models given")
    if not utterances:
        raise ValueError("analyse: no utterances for the statistics")
    out_dir = Path(out_dir)
    frame_ms = {name: 1000 * m.frame_shift / m.sample_rate for name, m in models.items()}
    maps, rows = {}, []
    for name, model in models.items():
        w, lengths = attention_of(model, map_wav)
        maps[name] = as_numpy_maps(w, int(lengths[0]))
        for utt, wav in tqdm(utterances, desc=f"attention {name}", unit="utt", leave=False):
            w, lengths = attention_of(model, wav)
            rows += stats_rows(name, [utt], w, lengths, local_frames_of(frame_ms[name]))
    per_head = pd.DataFrame(rows)
    summary = summarise(per_head, frame_ms)
    secs = len(map_wav) / next(iter(models.values())).sample_rate
    plot_attention_maps(maps, frame_ms, out_dir / "attention_maps.png",
                        f"Self-attention maps of {map_name} ({secs:.1f} s); y = query time, x = key time")
    plot_attention_stats(summary, out_dir / "attention_stats.png")
    atomic_write_text(out_dir / "attention_stats_per_head.csv", per_head.to_csv(index=False))
    atomic_write_text(out_dir / "attention_stats.csv", summary.to_csv(index=False))
    atomic_write_text(out_dir / "attention_stats.md", stats_markdown(summary))
    return summary


def local_frames_of(frame_ms: float) -> int:
    return max(1, round(LOCAL_MS / frame_ms))


def _crop(wav: torch.Tensor, max_seconds: float, sr: int, what: str) -> torch.Tensor:
    if wav.numel() == 0:
        raise AudioError(f"{what}: empty audio")
    return wav[: int(max_seconds * sr)]


def load_models(ckpts: list[str], specs: list[str], stats_wavs: list[torch.Tensor]) -> dict[str, TransformerUpstream]:
    """NAME=CKPT_DIR pairs and checkpoint-free specs (e.g. mockingjay_random) -> named attention-capable upstreams."""
    models: dict[str, TransformerUpstream] = {}
    family_ckpts: dict[str, str] = {}
    for arg in ckpts:
        name, sep, path = arg.partition("=")
        if not sep or not name or not path:
            raise ValueError(f"--ckpt expects NAME=CKPT_DIR (e.g. mockingjay=ckpt/mj), got {arg!r}")
        models[name] = load_upstream(path)
        family_ckpts.setdefault(str(read_meta(path).get("upstream")), path)
    for spec in specs:
        fam, preset = family_of(spec)
        feature, encoder = fam.front_end(preset), None
        if feature is None or not fam.takes_front_end:
            raise ValueError(f"--upstream {spec!r}: only weight-free specs here (e.g. mockingjay_random); give a "
                             f"checkpoint as --ckpt NAME=CKPT_DIR")
        if fam.architecture_from is not None:  # the architecture of the family's --ckpt, else of its reference one
            feature, encoder = control_architecture(spec, family_ckpts, Path("runs/pretrain"), False, False)
        if feature.norm == "corpus" and not feature.has_stats:
            # A control whose twin is still to be pretrained has no statistics yet: the analysed audio's stand in.
            feature = feature.with_stats(*corpus_stats(feature, stats_wavs))
        model = build_upstream(spec, feature=feature, encoder=encoder)
        if not isinstance(model, TransformerUpstream):
            raise ValueError(f"--upstream {spec!r} has no self-attention (only mockingjay / aalbert models do)")
        models[spec] = model
    return models


def corpus_utterances(root: Path, split: str, n: int, seed: int, sr: int, max_seconds: float) -> list[tuple[str, torch.Tensor]]:
    """A seeded random sample of `n` utterances of `split` (all of them when fewer)."""
    corpus = load_corpus(root)
    utts = sorted(corpus.utterances(split), key=lambda u: u.id)
    if not utts:
        raise ValueError(f"--corpus {root}: split {split!r} has no utterances")
    pick = np.random.default_rng(seed).choice(len(utts), size=min(n, len(utts)), replace=False)
    out = []
    for i in sorted(pick):
        u = utts[i]
        out.append((u.id, _crop(load_audio(corpus.audio_path(u), sr), max_seconds, sr, str(corpus.audio_path(u)))))
    return out


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description="Attention maps and per-layer attention statistics.")
    p.add_argument("--ckpt", action="append", default=[], help="NAME=CKPT_DIR, repeatable (e.g. mockingjay=ckpt/mj)")
    p.add_argument("--upstream", action="append", default=[], help="checkpoint-free spec, e.g. mockingjay_random")
    p.add_argument("--audio", type=Path, required=True, help="audio file whose attention maps are drawn")
    p.add_argument("--corpus", type=Path, default=None, help="prepared corpus for the statistics (default: --audio only)")
    p.add_argument("--split", default="test", help="corpus split sampled for the statistics (default: test)")
    p.add_argument("--n", type=int, default=20, help="utterances sampled from --corpus (default: 20)")
    p.add_argument("--max-seconds", type=float, default=DEFAULT_MAX_SECONDS, help="crop longer audio (default: 15)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--out", type=Path, required=True, help="output folder")
    args = p.parse_args(argv)
    if not args.ckpt and not args.upstream:
        p.error("give at least one --ckpt NAME=CKPT_DIR or --upstream SPEC")
    if args.n < 1:
        p.error(f"--n must be >= 1, got {args.n}")
    seed_everything(args.seed)
    try:
        sr = 16_000
        map_wav = _crop(load_audio(args.audio, sr), args.max_seconds, sr, str(args.audio))
        utts = (corpus_utterances(args.corpus, args.split, args.n, args.seed, sr, args.max_seconds) if args.corpus
                else [(args.audio.stem, map_wav)])
        models = load_models(args.ckpt, args.upstream, [w for _, w in utts])
        rates = {m.sample_rate for m in models.values()}
        if rates != {sr}:
            raise ValueError(f"models expect sample rates {sorted(rates)}; this tool feeds {sr} Hz audio")
        summary = analyse(models, map_wav, utts, args.out, map_name=args.audio.name)
    except (FileNotFoundError, ValueError) as e:  # AudioError and CheckpointError are ValueErrors
        print(f"error: {e}", file=sys.stderr)
        return 2
    atomic_write_text(args.out / "command.txt", "python -m analysis.attention " + shlex.join(sys.argv[1:] if argv is None else argv) + "\n")
    print((args.out / "attention_stats.md").read_text(encoding="utf-8"))
    print(f"wrote {args.out}/attention_maps.png, attention_stats.png, attention_stats.csv/.md ({len(summary)} rows)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
