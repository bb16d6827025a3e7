"""CLI: python -m pretrain --upstream mockingjay:small --corpus DIR --out DIR [--steps N] [--resume] [--audio DIR_OR_LIST]

Data-parallel on N processes: torchrun --nproc_per_node N -m pretrain ... (the same flags; --batch-size is the global
batch). Started by torchrun with more than one process, it joins torchrun's process group (nccl on CUDA, one GPU per
process; gloo on CPU); without torchrun it is one process, as always.

Input errors (unknown upstream, bad option values, a missing corpus, audio folder or list, a checkpoint in --out
that is corrupt or does not match) are one `error: ...` line naming the flag or file, exit status 2, checked
before any training starts; anything else is a bug and keeps its traceback.
"""
from __future__ import annotations

import argparse
import logging
import math
import os
import re
import sys
from pathlib import Path

import torch

from core.io import read_text
from pretrain import distributed
from pretrain.config import DEFAULT_RECIPE, RECIPES, PretrainConfig, default_budget, with_overrides
from pretrain.model import COMPILE_CHOICES
from pretrain.train import run_pretraining
from upstream.checkpoint import META_FILE, verify_checkpoint
from upstream.registry import pretrainable_family, pretrainable_names


def _parser() -> argparse.ArgumentParser:
    ap = argparse.ArgumentParser(prog="python -m pretrain", description="Masked acoustic model pretraining "
                                 "(Mockingjay / AALBERT) with checkpoints, resume and a CSV loss log.")
    ap.add_argument("--upstream", required=True, help=f"pretrainable spec NAME[:PRESET], NAME one of "
                                                       f"{', '.join(pretrainable_names())} (e.g. mockingjay:small)")
    src = ap.add_mutually_exclusive_group(required=True)
    src.add_argument("--corpus", type=Path, help="prepared corpus directory (its pretrain split is used)")
    src.add_argument("--audio", type=Path, help="folder of audio files, or a text file listing one path per line")
    ap.add_argument("--out", type=Path, required=True, help="checkpoint directory (also holds loss.csv)")
    ap.add_argument("--resume", action="store_true", help="continue the checkpoint in --out")
    ap.add_argument("--recipe", choices=[*RECIPES, "quick"], default=DEFAULT_RECIPE,
                    help="named recipe (pretrain.config.RECIPES, docs/pretraining.md) at the main job's budget of "
                         "500 steps; flags below override it. quick: a smoke run")
    ap.add_argument("--steps", type=int)
    ap.add_argument("--batch-size", type=int)
    ap.add_argument("--accumulation", type=int)
    ap.add_argument("--crop-frames", type=int)
    ap.add_argument("--lr", type=float)
    ap.add_argument("--precision", choices=["auto", "float32", "bfloat16"])
    ap.add_argument("--unmasked-weight", type=float,
                    help="weight w of the L1 on unmasked frames: loss = (1 - w) masked + w unmasked (default 0)")
    ap.add_argument("--ckpt-interval", type=int)
    ap.add_argument("--eval-interval", type=int)
    ap.add_argument("--seed", type=int)
    ap.add_argument("--stop-at-step", type=int, help="stop (with a checkpoint) after this step; continue with --resume")
    ap.add_argument("--until-yardstick", action="store_true",
                    help="stop after the first held-out loss below linear interpolation (recipe studies)")
    ap.add_argument("--max-cpu-seconds", type=float, help="stop once training steps used this much CPU time")
    ap.add_argument("--device", help="cpu or cuda (default: cuda when available; under torchrun each process takes "
                                      "the GPU of its LOCAL_RANK)")
    ap.add_argument("--compile", choices=COMPILE_CHOICES, default="auto",
                    help="how steps run: eager (off), torch.compile (default), or compiled and replayed as CUDA graphs "
                         "(reduce-overhead); auto: pretrain.model.AUTO_COMPILE_ON_CUDA on one GPU, eager on CPUs")
    ap.add_argument("--dist-timeout", type=float, default=distributed.DEFAULT_TIMEOUT_S,
                    help="under torchrun: seconds a rank waits for the others before the run fails (default 1800)")
    return ap


def _config(args: argparse.Namespace) -> PretrainConfig:
    base = default_budget(quick=True) if args.recipe == "quick" else RECIPES[args.recipe]
    try:
        return with_overrides(base, steps=args.steps, batch_size=args.batch_size, accumulation=args.accumulation,
                              crop_frames=args.crop_frames, lr=args.lr, precision=args.precision,
                              unmasked_weight=args.unmasked_weight,
                              ckpt_interval=args.ckpt_interval, eval_interval=args.eval_interval, seed=args.seed)
    except ValueError as e:  # PretrainConfig validates its fields: name them as the flags the user typed
        raise ValueError(re.sub(r"PretrainConfig\.(\w+)", lambda m: "--" + m.group(1).replace("_", "-"), str(e))) from None


def check_inputs(args: argparse.Namespace) -> None:
    """Everything that can be checked before the audio is read or a model built; ValueError naming the flag."""
    try:
        fam, _ = pretrainable_family(args.upstream)
    except ValueError as e:  # unknown name or preset, or not pretrainable here: names the valid ones
        raise ValueError(f"--upstream {args.upstream}: {e}") from None
    name = fam.name
    if args.device is not None:
        try:
            dev = torch.device(args.device)
        except RuntimeError as e:
            raise ValueError(f"--device {args.device!r} is not a torch device (cpu, cuda, cuda:1, ...): {e}") from None
        if dev.type == "cuda" and not torch.cuda.is_available():
            raise ValueError(f"--device {args.device}: CUDA is not available on this machine (use cpu)")
    if args.lr is not None and not (math.isfinite(args.lr) and args.lr > 0):
        raise ValueError(f"--lr must be a finite number > 0, got {args.lr}")
    if args.max_cpu_seconds is not None and not (math.isfinite(args.max_cpu_seconds) and args.max_cpu_seconds > 0):
        raise ValueError(f"--max-cpu-seconds must be a finite number > 0, got {args.max_cpu_seconds}")
    if not (math.isfinite(args.dist_timeout) and args.dist_timeout > 0):
        raise ValueError(f"--dist-timeout must be a finite number of seconds > 0, got {args.dist_timeout}")
    if args.stop_at_step is not None and args.stop_at_step < 1:
        raise ValueError(f"--stop-at-step must be >= 1, got {args.stop_at_step}")
    if args.out.exists() and not args.out.is_dir():
        raise ValueError(f"--out {args.out} exists and is not a directory")
    source = args.corpus or args.audio
    if source.is_file():
        read_text(source, "audio list")  # a non-UTF-8 list: file, line and byte named
    if args.resume and (args.out / META_FILE).is_file():
        verify_checkpoint(args.out, family=name, groups=("model", "train"))


def main(argv: list[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    world = distributed.launched_with_ranks()
    rank = int(os.environ.get("RANK", "0")) if world > 1 else 0
    logging.basicConfig(level=logging.INFO if rank == 0 else logging.WARNING,
                        format=f"%(levelname)s {f'rank {rank} ' if world > 1 else ''}%(name)s: %(message)s")
    finished = False
    try:
        check_inputs(args)
        cfg = _config(args)
        device = distributed.init_from_env(args.device, args.dist_timeout) if world > 1 else args.device
        out = run_pretraining(args.upstream, args.corpus or args.audio, args.out, cfg, resume=args.resume,
                              stop_at_step=args.stop_at_step, until_yardstick=args.until_yardstick,
                              max_cpu_seconds=args.max_cpu_seconds, device=device, compile=args.compile)
        finished = True
    except (ValueError, FileNotFoundError, FileExistsError) as e:  # input errors (CheckpointError, AudioError, ...)
        print(f"error: {e}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        if rank == 0:
            print(f"interrupted; continue with --resume --out {args.out}", file=sys.stderr)
        return 130
    finally:
        distributed.shutdown(synchronise=finished)
    if rank == 0:
        print(f"checkpoint: {out}" + (f" ({world} ranks)" if world > 1 else ""))
    return 0


if __name__ == "__main__":
    sys.exit(main())
