"""Turn a finished pretraining run into a shippable reference checkpoint.

    python -m pretrain.release runs/reference/mockingjay-small checkpoints/mockingjay-small \\
        --command "python -m pretrain --upstream mockingjay:small ..."

Writes OUT as a model-only toolkit checkpoint (no optimiser moments or RNG state: a third of the size; it loads
anywhere a checkpoint does but cannot be resumed), with the run's loss.csv, a loss-curve plot (loss.png) and
command.txt (the pretraining command given, then this one). Prints the SHA-256 of OUT/checkpoint.json, the value
to pin in upstream/reference.py.
"""
from __future__ import annotations

import argparse
import shlex
import shutil
import sys
from pathlib import Path

import pandas as pd

from core.io import atomic_write_text, sha256_file
from pretrain.train import LOG_FILE
from upstream.checkpoint import META_FILE, CheckpointError, load_checkpoint, save_checkpoint


def release(run_dir: Path, out: Path, commands: list[str]) -> str:
    meta, tensors = load_checkpoint(run_dir)
    if not meta.get("complete"):
        raise CheckpointError(f"checkpoint {run_dir} is not complete (step {meta.get('step')}): finish it first")
    if (out / META_FILE).exists():
        raise FileExistsError(f"{out} already holds a checkpoint: remove it first")
    meta = {k: v for k, v in meta.items() if k not in ("train_state", "files", "format_version")}
    tmp = out.with_name(out.name + ".partial")
    shutil.rmtree(tmp, ignore_errors=True)
    save_checkpoint(tmp, {"model": tensors["model"]}, meta)
    shutil.copyfile(run_dir / LOG_FILE, tmp / LOG_FILE)
    plot_loss(tmp / LOG_FILE, meta, tmp / "loss.png")
    atomic_write_text(tmp / "command.txt", "\n".join(commands) + "\n")
    tmp.rename(out)  # the directory appears whole or not at all
    return sha256_file(out / META_FILE)


def plot_loss(log: Path, meta: dict, path: Path) -> Path:
    from core.figures import plt, save_figure  # matplotlib loads only when a loss curve is drawn

    df = pd.read_csv(log)
    val = df.dropna(subset=["val_loss"])
    fig, ax = plt.subplots(figsize=(6.4, 4.2))
    ax.plot(df["frames"] / 1e6, df["train_loss"], lw=0.8, alpha=0.6, label="training batches")
    ax.plot(val["frames"] / 1e6, val["val_loss"], "o-", ms=3, label="held out")
    for key, style in (("mean", ":"), ("interpolate", "--")):
        if meta.get("val_baselines"):
            ax.axhline(meta["val_baselines"][key], color="#777777", ls=style, label=f"yardstick: {key}")
    ax.set(xlabel="pretraining frames (millions of 10-ms frames)", ylabel="masked L1",
           title=f"{meta['upstream']}:{meta['preset']}, recipe {meta['pretrain_config']['recipe']}")
    ax.legend(fontsize=8)
    return save_figure(fig, path)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m pretrain.release", description=__doc__.splitlines()[0])
    ap.add_argument("run_dir", type=Path, help="a complete pretraining checkpoint directory")
    ap.add_argument("out", type=Path, help="where the reference checkpoint goes (must not exist)")
    ap.add_argument("--command", action="append", default=[], help="the command(s) that trained it (repeatable)")
    a = ap.parse_args(argv)
    this = "python -m pretrain.release " + shlex.join(sys.argv[1:] if argv is None else argv)
    try:
        digest = release(a.run_dir, a.out, [*a.command, this])
    except (ValueError, FileNotFoundError, FileExistsError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    print(f"{a.out}: checkpoint.json SHA-256 {digest} (pin it in upstream/reference.py)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
