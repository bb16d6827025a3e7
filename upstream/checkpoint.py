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
from safetensors import SafetensorError, safe_open
from safetensors.torch import load_file, save_file

from core.io import atomic_write_json, new_file_mode, read_json, sha256_file
from upstream.transformer import EncoderConfig, TransformerEncoder

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
        tmp.chmod(new_file_mode())  # save_file creates it 0o600: give it the umask's mode, as checkpoint.json has
        tmp.replace(ckpt_dir / name)
        files[group] = {"file": name, "sha256": sha256_file(ckpt_dir / name)}
    atomic_write_json(ckpt_dir / META_FILE, {**meta, "format_version": FORMAT_VERSION, "files": files})
    keep = {f["file"] for f in files.values()} | {META_FILE}
    # older versions' weights, and what a process killed while saving left: weights no checkpoint.json names and
    # the temporary files of save_file / atomic_write_json (one writer per checkpoint directory)
    for p in [*ckpt_dir.glob("*.safetensors"), *ckpt_dir.glob(".*.safetensors.tmp"), *ckpt_dir.glob(f".{META_FILE}.*.tmp")]:
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
    _check_files_entry(ckpt_dir, meta["files"])
    return meta


def _check_files_entry(ckpt_dir: Path, files: Any) -> None:
    """`files` must map group -> {file: a .safetensors name inside the directory, sha256: hex digest}."""
    where = f"checkpoint {ckpt_dir / META_FILE}"
    if not isinstance(files, dict) or "model" not in files:
        raise CheckpointError(f"{where}: 'files' must map tensor groups (at least 'model') to their files")
    for group, entry in files.items():
        if not (isinstance(entry, dict) and isinstance(entry.get("file"), str) and isinstance(entry.get("sha256"), str)):
            raise CheckpointError(f"{where}: files.{group} must be {{\"file\": NAME, \"sha256\": HEX}}, got {entry!r}")
        name = entry["file"]
        if Path(name).name != name or name in ("", ".", "..") or not name.endswith(".safetensors"):
            raise CheckpointError(f"{where}: files.{group} names {name!r}; expected a .safetensors file inside "
                                  f"the checkpoint directory")


def _checked_file(ckpt_dir: Path, meta: dict[str, Any], group: str) -> Path:
    """The group's weights file after checking it is there and its SHA-256 is the recorded one."""
    entry = meta["files"].get(group)
    if entry is None:
        raise CheckpointError(f"checkpoint {ckpt_dir}: has no '{group}' tensors (has {sorted(meta['files'])})")
    path = ckpt_dir / entry["file"]
    if not path.is_file():
        raise CheckpointError(f"checkpoint {ckpt_dir}: weights file {path.name} is missing")
    if sha256_file(path) != entry["sha256"]:
        raise CheckpointError(f"checkpoint {ckpt_dir}: weights file {path.name} is corrupt or truncated "
                              "(SHA-256 differs from checkpoint.json)")
    return path


def _check_model_dtypes(ckpt_dir: Path, name: str, dtypes: dict[str, str]) -> None:
    """Model weights are floating point; an integer or boolean dtype is a header that lies or a foreign file."""
    bad = {k: d for k, d in dtypes.items() if not d.startswith(("F", "BF"))}
    if bad:
        k = sorted(bad)[0]
        raise CheckpointError(f"checkpoint {ckpt_dir}: {name} holds {len(bad)} non-floating-point model tensor(s), "
                              f"e.g. {k!r} of dtype {bad[k]}")


def tensor_specs(ckpt_dir: str | Path, group: str = "model") -> dict[str, tuple[str, tuple[int, ...]]]:
    """{name: (safetensors dtype, shape)} of one group from its file's header, without reading the weights,
    after the same presence, SHA-256 and header checks as load_checkpoint (a planning-time check)."""
    ckpt_dir = Path(ckpt_dir)
    path = _checked_file(ckpt_dir, read_meta(ckpt_dir), group)
    try:
        with safe_open(str(path), framework="pt") as f:
            specs = {k: (str(f.get_slice(k).get_dtype()), tuple(f.get_slice(k).get_shape())) for k in f.keys()}
    except (SafetensorError, OSError) as e:
        raise CheckpointError(f"checkpoint {ckpt_dir}: cannot read {path.name}: {e}") from e
    if group == "model":
        _check_model_dtypes(ckpt_dir, path.name, {k: d for k, (d, _) in specs.items()})
    return specs


def load_checkpoint(ckpt_dir: str | Path, groups: tuple[str, ...] = ("model",)
                    ) -> tuple[dict[str, Any], dict[str, dict[str, torch.Tensor]]]:
    """Return (meta, {group: state_dict}) after checking every requested file's presence and SHA-256.

    safetensors validates the header against the file (sizes, offsets, dtypes), so a file whose header lies is a
    CheckpointError too, even when checkpoint.json was rewritten to carry its hash."""
    ckpt_dir = Path(ckpt_dir)
    meta = read_meta(ckpt_dir)
    out: dict[str, dict[str, torch.Tensor]] = {}
    for group in groups:
        path = _checked_file(ckpt_dir, meta, group)
        try:
            out[group] = load_file(str(path))
        except (SafetensorError, OSError) as e:
            raise CheckpointError(f"checkpoint {ckpt_dir}: cannot read {path.name}: {e}") from e
        if group == "model":
            _check_model_dtypes(ckpt_dir, path.name, {k: str(v.dtype) for k, v in out[group].items()
                                                      if not v.is_floating_point()})
    return meta, out


def verify_checkpoint(ckpt_dir: str | Path, family: str | None = None, groups: tuple[str, ...] = ("model",)) -> None:
    """Check a checkpoint without loading its weights (what a command checks before it starts work): metadata,
    each group's file and SHA-256, the safetensors headers, the upstream family, and that the encoder tensors'
    names and shapes are those of the encoder its config describes."""
    ckpt_dir = Path(ckpt_dir)
    meta = read_meta(ckpt_dir)
    if family is not None and meta.get("upstream") not in (None, family):
        raise CheckpointError(f"checkpoint {ckpt_dir} holds a {meta.get('upstream')!r} model, expected {family!r}")
    specs = {g: tensor_specs(ckpt_dir, g) for g in groups}
    try:
        cfg = EncoderConfig.from_dict(meta["encoder"])
        with torch.device("meta"):  # shapes only: no memory, no initialisation
            expected = {f"encoder.{k}": tuple(v.shape) for k, v in TransformerEncoder(cfg).state_dict().items()}
    except (KeyError, ValueError, TypeError) as e:
        raise CheckpointError(f"checkpoint {ckpt_dir}: bad or missing encoder config: {e}") from e
    got = {k: shape for k, (_, shape) in specs["model"].items() if k.startswith("encoder.")} if "model" in specs else expected
    missing, unexpected = sorted(set(expected) - set(got)), sorted(set(got) - set(expected))
    wrong = sorted(k for k in set(expected) & set(got) if expected[k] != got[k])
    if missing or unexpected or wrong:
        detail = "; ".join(x for x in (
            missing and f"missing {missing[:3]}", unexpected and f"unexpected {unexpected[:3]}",
            wrong and f"{wrong[0]} is {list(got[wrong[0]])}, the config implies {list(expected[wrong[0]])}") if x)
        raise CheckpointError(f"checkpoint {ckpt_dir}: weights do not match its encoder config ({detail})")


def checkpoint_hash(ckpt_dir: str | Path) -> str:
    """Content hash of a checkpoint's model weights (the cache key of everything derived from it)."""
    return read_meta(ckpt_dir)["files"]["model"]["sha256"]
