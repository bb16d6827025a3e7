"""Safe checkpoints: tensors in safetensors files, everything else in one JSON file. Nothing pickled.

A checkpoint is a directory holding `checkpoint.json` and one safetensors file per tensor group
("model" always; "train" for optimizer state when resumable). Each group's file name carries a fresh
token and the JSON records its SHA-256; the JSON is written last (atomically), so a crash at any point
leaves either the previous complete checkpoint or the new one, and a truncated or swapped file is caught.
"""
from __future__ import annotations

import secrets
from pathlib import Path
from typing import Any

import torch
from safetensors import SafetensorError
from safetensors.torch import load_file, save_file

from core.io import atomic_write_json, read_json, sha256_file

FORMAT_VERSION = 1
META_FILE = "checkpoint.json"


class CheckpointError(ValueError):
    """A checkpoint that is missing, corrupt, truncated or does not match what was asked for."""


def save_checkpoint(ckpt_dir: str | Path, tensors: dict[str, dict[str, torch.Tensor]], meta: dict[str, Any]) -> Path:
    """Write tensor groups then `checkpoint.json` (the commit point); remove files of older versions."""
    ckpt_dir = Path(ckpt_dir)
    ckpt_dir.mkdir(parents=True, exist_ok=True)
    if "model" not in tensors:
        raise ValueError("save_checkpoint: the 'model' tensor group is required")
    token = secrets.token_hex(4)
    files: dict[str, dict[str, str]] = {}
    for group, state in tensors.items():
        name = f"{group}-{token}.safetensors"
        tmp = ckpt_dir / f".{name}.tmp"
        save_file({k: v.detach().contiguous().cpu() for k, v in state.items()}, str(tmp))
        tmp.replace(ckpt_dir / name)
        files[group] = {"file": name, "sha256": sha256_file(ckpt_dir / name)}
    atomic_write_json(ckpt_dir / META_FILE, {**meta, "format_version": FORMAT_VERSION, "files": files})
    keep = {f["file"] for f in files.values()} | {META_FILE}
    for p in ckpt_dir.glob("*.safetensors"):
        if p.name not in keep:
            p.unlink(missing_ok=True)
    return ckpt_dir


def read_meta(ckpt_dir: str | Path) -> dict[str, Any]:
    ckpt_dir = Path(ckpt_dir)
    if not ckpt_dir.is_dir():
        raise CheckpointError(f"checkpoint {ckpt_dir}: not a directory (expected one holding {META_FILE})")
    try:
        meta = read_json(ckpt_dir / META_FILE, "checkpoint metadata")
    except (FileNotFoundError, ValueError) as e:
        raise CheckpointError(f"checkpoint {ckpt_dir}: {e}") from e
    if not isinstance(meta, dict) or "format_version" not in meta or "files" not in meta:
        raise CheckpointError(f"checkpoint {ckpt_dir / META_FILE}: not a toolkit checkpoint (no format_version/files)")
    if meta["format_version"] != FORMAT_VERSION:
        raise CheckpointError(f"checkpoint {ckpt_dir / META_FILE}: format version {meta['format_version']}, "
                              f"this toolkit reads version {FORMAT_VERSION}")
    return meta


def load_checkpoint(ckpt_dir: str | Path, groups: tuple[str, ...] = ("model",)
                    ) -> tuple[dict[str, Any], dict[str, dict[str, torch.Tensor]]]:
    """Return (meta, {group: state_dict}) after checking every requested file's presence and SHA-256."""
    ckpt_dir = Path(ckpt_dir)
    meta = read_meta(ckpt_dir)
    out: dict[str, dict[str, torch.Tensor]] = {}
    for group in groups:
        entry = meta["files"].get(group)
        if entry is None:
            raise CheckpointError(f"checkpoint {ckpt_dir}: has no '{group}' tensors (has {sorted(meta['files'])})")
        path = ckpt_dir / entry["file"]
        if not path.is_file():
            raise CheckpointError(f"checkpoint {ckpt_dir}: weights file {path.name} is missing")
        if sha256_file(path) != entry["sha256"]:
            raise CheckpointError(f"checkpoint {ckpt_dir}: weights file {path.name} is corrupt or truncated "
                                  "(SHA-256 differs from checkpoint.json)")
        try:
            out[group] = load_file(str(path))
        except (SafetensorError, OSError) as e:
            raise CheckpointError(f"checkpoint {ckpt_dir}: cannot read {path.name}: {e}") from e
    return meta, out


def checkpoint_hash(ckpt_dir: str | Path) -> str:
    """Content hash of a checkpoint's model weights (the cache key of everything derived from it)."""
    return read_meta(ckpt_dir)["files"]["model"]["sha256"]
