"""Convert an s3prl Mockingjay/AALBERT .ckpt into a toolkit checkpoint without executing pickle code.

Usage: python -m pretrain.import_s3prl IN.ckpt OUT_DIR [--force]

The file is read by upstream.s3prl_compat.safe_torch_load: any pickled object other than tensors and plain
containers comes back as an inert Placeholder. Where the weights or the model config hold such an object, or
anything but tensors and plain data, the import stops with an error naming the field; nothing is written then,
and an existing checkpoint in OUT_DIR is replaced only with --force.
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

import torch

from core.io import sha256_file
from core.repro import provenance
from pretrain.model import MaskedAcousticModel
from upstream.checkpoint import META_FILE, save_checkpoint
from upstream.s3prl_compat import Placeholder, head_to_ours, s3prl_to_ours, safe_torch_load
from upstream.s3prl_config import encoder_config_from_s3prl, feature_config_from_s3prl, s3prl_model_config

PLAIN = (str, int, float, bool, type(None))


def _kind(obj: object) -> str:
    if isinstance(obj, Placeholder):
        return f"a pickled {obj.origin} object (not loaded)"
    return f"a {type(obj).__name__}"


def tensor_group(ckpt: dict, key: str, where: str, required: bool) -> dict[str, torch.Tensor]:
    """ckpt[key] as {name: plain float tensor}; ValueError naming the field for anything else."""
    group = ckpt.get(key)
    if group is None and not required:
        return {}
    if not isinstance(group, dict):
        raise ValueError(f"{where}: {key!r} must be a dict of weight tensors, got {_kind(group)}")
    out = {}
    for name, t in group.items():
        if not isinstance(name, str) or not isinstance(t, torch.Tensor):
            raise ValueError(f"{where}: {key}[{name!r}] must be a named tensor, got {_kind(t)}")
        if not t.is_floating_point():
            raise ValueError(f"{where}: {key}[{name!r}] has dtype {t.dtype}, expected floating-point weights")
        out[name] = t.detach()  # a plain tensor: no hooks or attributes the pickle may have attached
    return out


def plain_config(obj: object, where: str) -> None:
    """The model config must be plain data (as s3prl's YAML gives): dicts, lists, strings and numbers."""
    if isinstance(obj, dict):
        for k, v in obj.items():
            if not isinstance(k, str):
                raise ValueError(f"{where}: key {k!r} is {_kind(k)}, expected a string")
            plain_config(v, f"{where}.{k}")
    elif isinstance(obj, (list, tuple)):
        for i, v in enumerate(obj):
            plain_config(v, f"{where}[{i}]")
    elif not isinstance(obj, PLAIN):
        raise ValueError(f"{where} is {_kind(obj)}, expected plain data")


def _check_out(out_dir: Path, force: bool) -> None:
    if out_dir.exists() and not out_dir.is_dir():
        raise ValueError(f"output {out_dir} exists and is not a directory")
    if (out_dir / META_FILE).is_file() and not force:
        raise FileExistsError(f"output {out_dir} already holds a checkpoint; choose another directory or pass --force "
                              f"to replace it")
    if out_dir.is_dir() and any(out_dir.iterdir()) and not (out_dir / META_FILE).is_file():
        raise ValueError(f"output {out_dir} is a non-empty directory without {META_FILE}; choose an empty or new one")


def import_s3prl(ckpt_path: str | Path, out_dir: str | Path, force: bool = False) -> Path:
    """Read `ckpt_path` safely, map weights and configs, check they load, save to `out_dir`; return it."""
    ckpt_path, out_dir = Path(ckpt_path), Path(out_dir)
    _check_out(out_dir, force)
    ckpt = safe_torch_load(ckpt_path)
    where = f"s3prl checkpoint {ckpt_path}"
    if "Transformer" not in ckpt:
        raise ValueError(f"{where}: no 'Transformer' weights (keys: {sorted(map(str, ckpt))})")
    state = tensor_group(ckpt, "Transformer", where, required=True)
    head = tensor_group(ckpt, "SpecHead", where, required=False)
    w = state.get("input_representations.spec_transform.weight")
    if w is None or w.dim() != 2:
        raise ValueError(f"{where}: no 2-d input_representations.spec_transform.weight (not a Mockingjay model?)")
    model_cfg = s3prl_model_config(ckpt, where)
    plain_config(model_cfg, f"{where}: model config")
    enc = encoder_config_from_s3prl(model_cfg, int(w.shape[1]), where)
    feature = feature_config_from_s3prl(model_cfg, enc.input_dim, where)
    tensors = {f"encoder.{k}": v for k, v in s3prl_to_ours(state, enc, where).items()}
    tensors.update({f"head.{k}": v for k, v in head_to_ours(head, where).items()})
    out_w = head.get("output.weight")
    if head and (out_w is None or out_w.dim() != 2):
        raise ValueError(f"{where}: SpecHead has no 2-d output.weight")
    target_dim = int(out_w.shape[0]) if out_w is not None else feature.feature_dim
    model = MaskedAcousticModel(enc, target_dim)  # strict load: proves the mapping covers every weight
    try:
        model.encoder.load_state_dict({k.removeprefix("encoder."): v for k, v in tensors.items()
                                       if k.startswith("encoder.")})
        if head:
            model.head.load_state_dict({k.removeprefix("head."): v for k, v in tensors.items() if k.startswith("head.")})
    except RuntimeError as e:  # missing/unexpected keys or shapes that contradict the config
        raise ValueError(f"{where}: weights do not match its transformer config: "
                         f"{' '.join(str(e).split())[:300]}") from None
    step = ckpt.get("Step")
    meta = {"upstream": "aalbert" if enc.share_layers else "mockingjay", "preset": "s3prl-import",
            "encoder": enc.to_dict(), "feature": feature.to_dict(), "step": int(step) if isinstance(step, int) else None,
            "pretrain_frames": None, "pretrain_seconds": None, "pretrain_config": None, "complete": True,
            "corpus": {"kind": "s3prl", "source": str(ckpt_path.resolve()), "sha256": sha256_file(ckpt_path)},
            "provenance": provenance("cpu")}
    return save_checkpoint(out_dir, {"model": {k: v.float() for k, v in tensors.items()}}, meta)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m pretrain.import_s3prl", description=__doc__.splitlines()[0])
    ap.add_argument("ckpt", type=Path, help="s3prl .ckpt file (Transformer weights + Config/Upstream_Config)")
    ap.add_argument("out", type=Path, help="output checkpoint directory")
    ap.add_argument("--force", action="store_true", help="replace a checkpoint already in the output directory")
    args = ap.parse_args(argv)
    try:
        out = import_s3prl(args.ckpt, args.out, force=args.force)
    except (ValueError, FileNotFoundError, FileExistsError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    print(f"wrote {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
