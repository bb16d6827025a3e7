"""Convert an s3prl Mockingjay/AALBERT .ckpt into a toolkit checkpoint without executing pickle code.

Usage: python -m pretrain.import_s3prl IN.ckpt OUT_DIR
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

from core.io import sha256_file
from core.repro import provenance
from pretrain.model import MaskedAcousticModel
from upstream.checkpoint import save_checkpoint
from upstream.s3prl_compat import (HEAD_MAP, encoder_config_from_s3prl, feature_config_from_s3prl, s3prl_model_config,
                                   s3prl_to_ours, safe_torch_load)


def import_s3prl(ckpt_path: str | Path, out_dir: str | Path) -> Path:
    """Read `ckpt_path` safely, map weights and configs, check they load, save to `out_dir`; return it."""
    ckpt_path, out_dir = Path(ckpt_path), Path(out_dir)
    ckpt = safe_torch_load(ckpt_path)
    where = f"s3prl checkpoint {ckpt_path}"
    if "Transformer" not in ckpt:
        raise ValueError(f"{where}: no 'Transformer' weights (keys: {sorted(map(str, ckpt))})")
    state = dict(ckpt["Transformer"])
    w = state.get("input_representations.spec_transform.weight")
    if w is None:
        raise ValueError(f"{where}: no input_representations.spec_transform.weight (not a Mockingjay model?)")
    model_cfg = s3prl_model_config(ckpt, where)
    enc = encoder_config_from_s3prl(model_cfg, int(w.shape[1]), where)
    feature = feature_config_from_s3prl(model_cfg, enc.input_dim, where)
    tensors = {f"encoder.{k}": v for k, v in s3prl_to_ours(state, enc, where).items()}
    head = ckpt.get("SpecHead")
    if isinstance(head, dict) and head:
        for k, v in head.items():
            mod, _, leaf = k.rpartition(".")
            if mod not in HEAD_MAP:
                raise ValueError(f"{where}: unexpected SpecHead key {k!r}")
            tensors[f"head.{HEAD_MAP[mod]}.{leaf}"] = v
        target_dim = int(head["output.weight"].shape[0])
    else:
        target_dim = feature.feature_dim
    model = MaskedAcousticModel(enc, target_dim)  # strict load: proves the mapping covers every weight
    model.encoder.load_state_dict({k.removeprefix("encoder."): v for k, v in tensors.items() if k.startswith("encoder.")})
    if any(k.startswith("head.") for k in tensors):
        model.head.load_state_dict({k.removeprefix("head."): v for k, v in tensors.items() if k.startswith("head.")})
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
    args = ap.parse_args(argv)
    try:
        out = import_s3prl(args.ckpt, args.out)
    except (ValueError, FileNotFoundError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    print(f"wrote {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
