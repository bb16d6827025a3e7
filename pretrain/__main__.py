"""CLI: python -m pretrain --upstream mockingjay:small --corpus DIR --out DIR [--steps N] [--resume] [--audio DIR_OR_LIST]"""
from __future__ import annotations

import argparse
import logging
import sys
from pathlib import Path

from pretrain.config import PretrainConfig, default_budget, with_overrides
from pretrain.train import run_pretraining


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m pretrain", description="Masked acoustic model pretraining "
                                 "(Mockingjay / AALBERT) with checkpoints, resume and a CSV loss log.")
    ap.add_argument("--upstream", required=True, help="transformer spec, e.g. mockingjay:small, aalbert:base")
    src = ap.add_mutually_exclusive_group(required=True)
    src.add_argument("--corpus", type=Path, help="prepared corpus directory (its pretrain split is used)")
    src.add_argument("--audio", type=Path, help="folder of audio files, or a text file listing one path per line")
    ap.add_argument("--out", type=Path, required=True, help="checkpoint directory (also holds loss.csv)")
    ap.add_argument("--resume", action="store_true", help="continue the checkpoint in --out")
    ap.add_argument("--budget", choices=["default", "main", "quick"], default="default",
                    help="start from PretrainConfig() defaults or the main job's budgets (pretrain.default_budget)")
    ap.add_argument("--steps", type=int)
    ap.add_argument("--batch-size", type=int)
    ap.add_argument("--accumulation", type=int)
    ap.add_argument("--crop-frames", type=int)
    ap.add_argument("--lr", type=float)
    ap.add_argument("--precision", choices=["auto", "float32", "bfloat16"])
    ap.add_argument("--ckpt-interval", type=int)
    ap.add_argument("--eval-interval", type=int)
    ap.add_argument("--seed", type=int)
    ap.add_argument("--stop-at-step", type=int, help="stop (with a checkpoint) after this step; continue with --resume")
    ap.add_argument("--device", help="cpu or cuda (default: cuda when available)")
    args = ap.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    base = {"default": PretrainConfig(), "main": default_budget(False), "quick": default_budget(True)}[args.budget]
    try:
        cfg = with_overrides(base, steps=args.steps, batch_size=args.batch_size, accumulation=args.accumulation,
                             crop_frames=args.crop_frames, lr=args.lr, precision=args.precision,
                             ckpt_interval=args.ckpt_interval, eval_interval=args.eval_interval, seed=args.seed)
        out = run_pretraining(args.upstream, args.corpus or args.audio, args.out, cfg, resume=args.resume,
                              stop_at_step=args.stop_at_step, device=args.device)
    except (ValueError, FileNotFoundError, FileExistsError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print(f"interrupted; continue with --resume --out {args.out}", file=sys.stderr)
        return 130
    print(f"checkpoint: {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
