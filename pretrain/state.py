"""Training checkpoints: model, optimizer and RNG state as safetensors groups plus JSON (nothing pickled)."""
from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import Tensor

from pretrain.model import MaskedAcousticModel
from upstream.checkpoint import CheckpointError, load_checkpoint, save_checkpoint


@dataclass
class Progress:
    """Where training stands at an optimizer-step boundary (what a resumed run continues from)."""

    step: int = 0
    epoch: int = 0
    batch_in_epoch: int = 0
    frames: int = 0  # valid frames seen
    seconds: float = 0.0  # wall time spent in training steps, over all sittings
    cpu_seconds: float = 0.0  # CPU time (all threads of the process) spent in training steps, over all sittings
    val_loss: float | None = None
    rng: dict[str, Tensor] = field(default_factory=dict)  # torch global + data generator states

    def to_json(self) -> dict[str, Any]:
        return {"epoch": self.epoch, "batch_in_epoch": self.batch_in_epoch}


def model_tensors(model: MaskedAcousticModel) -> dict[str, Tensor]:
    return {**{f"encoder.{k}": v for k, v in model.encoder.state_dict().items()},
            **{f"head.{k}": v for k, v in model.head.state_dict().items()}}


def save_training_checkpoint(out_dir: Path, model: MaskedAcousticModel, opt: torch.optim.Optimizer,
                             progress: Progress, meta: dict[str, Any]) -> Path:
    opt_sd = opt.state_dict()
    train = {f"opt.{i}.{k}": v for i, s in opt_sd["state"].items() for k, v in s.items()}
    train.update({f"rng.{k}": v for k, v in progress.rng.items()})
    meta = {**meta, "step": progress.step, "pretrain_frames": progress.frames,
            "pretrain_seconds": round(progress.seconds, 3), "pretrain_cpu_seconds": round(progress.cpu_seconds, 3),
            "val_loss": progress.val_loss,
            "train_state": {**progress.to_json(), "param_groups": opt_sd["param_groups"]}}
    return save_checkpoint(out_dir, {"model": model_tensors(model), "train": train}, meta)


def load_training_checkpoint(out_dir: Path, model: MaskedAcousticModel, opt: torch.optim.Optimizer
                             ) -> tuple[dict[str, Any], Progress]:
    """Restore model and optimizer in place; return (meta, progress). Mismatches raise CheckpointError naming the dir."""
    meta, groups = load_checkpoint(out_dir, ("model", "train"))
    tensors, train = groups["model"], groups["train"]
    try:
        enc = {k.removeprefix("encoder."): v for k, v in tensors.items() if k.startswith("encoder.")}
        head = {k.removeprefix("head."): v for k, v in tensors.items() if k.startswith("head.")}
        model.encoder.load_state_dict(enc)
        model.head.load_state_dict(head)
        state: dict[int, dict[str, Tensor]] = {}
        for k, v in train.items():
            if k.startswith("opt."):
                _, i, name = k.split(".", 2)
                state.setdefault(int(i), {})[name] = v
        ts = meta["train_state"]
        opt.load_state_dict({"state": state, "param_groups": ts["param_groups"]})
        rng = {k.removeprefix("rng."): v for k, v in train.items() if k.startswith("rng.")}
        progress = Progress(step=int(meta["step"]), epoch=int(ts["epoch"]), batch_in_epoch=int(ts["batch_in_epoch"]),
                            frames=int(meta["pretrain_frames"]), seconds=float(meta["pretrain_seconds"]),
                            cpu_seconds=float(meta.get("pretrain_cpu_seconds", 0.0)),
                            val_loss=meta.get("val_loss"), rng=rng)
    except (KeyError, RuntimeError, ValueError) as e:
        raise CheckpointError(f"checkpoint {out_dir}: cannot resume from it ({type(e).__name__}: {e})") from e
    return meta, progress
