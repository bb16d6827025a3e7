"""Export a toolkit Mockingjay/AALBERT checkpoint as an s3prl .ckpt that s3prl 0.4.18's mockingjay expert loads.

Usage: python -m pretrain.export_s3prl CKPT_DIR OUT.ckpt [--force]

The file is a plain `torch.save` of dicts, tensors, strings and numbers (it loads with `weights_only=True`):
`Transformer` (s3prl `TransformerModel` keys, from the one mapping in upstream/s3prl_compat.py), `SpecHead`,
`Upstream_Config` (transformer/task/audio sections, upstream/s3prl_config.py), `Config` (what was exported, from
where) and `Step`. s3prl has no field for two of our options, so they are folded into the weights, exactly
(affine maps composed in float64): corpus normalisation ((x - mean) / std per feature) goes into the input
projection and, inverted, into the reconstruction head's output (the file then says cmvn: False, and s3prl's
front-end feeds raw log-mels); a factorised input embedding becomes one projection. Nothing is written when the
checkpoint is unreadable or s3prl cannot express it; an existing OUT.ckpt is replaced only with --force.
"""
from __future__ import annotations

import argparse
import io
import sys
from dataclasses import replace
from pathlib import Path
from typing import Any

import torch
from torch import Tensor

from core.io import atomic_write_bytes
from core.repro import provenance
from upstream.checkpoint import CheckpointError, load_checkpoint
from upstream.features import FeatureConfig
from upstream.s3prl_compat import head_to_s3prl, ours_to_s3prl, s3prl_to_ours
from upstream.s3prl_config import s3prl_upstream_config
from upstream.transformer import EncoderConfig, TransformerEncoder


def _group(tensors: dict[str, Tensor], prefix: str) -> dict[str, Tensor]:
    return {k.removeprefix(prefix): v for k, v in tensors.items() if k.startswith(prefix)}


def fold_front_end(enc_state: dict[str, Tensor], head: dict[str, Tensor], enc: EncoderConfig, feat: FeatureConfig
                   ) -> tuple[dict[str, Tensor], dict[str, Tensor], EncoderConfig, FeatureConfig, list[str]]:
    """Rewrite weights so that what s3prl can express computes the same function.

    Returns (encoder state, head state, encoder config, feature config, what was folded). With per-dimension
    statistics tiled over the k stacked frames (m, s), the projection W x_n + b of x_n = (x - m) / s becomes
    (W / s) x + (b - W (m / s)), and the head's prediction p of x_n becomes s * p + m, a prediction of x.
    """
    enc_state, head = dict(enc_state), dict(head)
    dtype = enc_state["input.proj.weight"].dtype
    w, b = enc_state["input.proj.weight"].double(), enc_state["input.proj.bias"].double()
    folded = []
    if enc.embed_dim is not None:
        w = w @ enc_state.pop("input.embed.weight").double()  # (H, E) @ (E, input_dim); the embedding has no bias
        enc = replace(enc, embed_dim=None)
        folded.append("factorised input embedding composed into input_representations.spec_transform")
    if feat.norm == "corpus":
        mean = torch.tensor(feat.norm_mean, dtype=torch.float64).repeat(feat.downsample)  # stacked layout [f0|f1|..]
        std = torch.tensor(feat.norm_std, dtype=torch.float64).repeat(feat.downsample)
        w, b = w / std, b - w @ (mean / std)
        if head:
            out_w, out_b = head["out.weight"].double(), head["out.bias"].double()
            if out_w.shape[0] != mean.shape[0]:
                raise ValueError(f"the reconstruction head predicts {out_w.shape[0]} dims, not the {mean.shape[0]} "
                                 "normalised features: its normalisation cannot be undone")
            head["out.weight"], head["out.bias"] = (std[:, None] * out_w).to(dtype), (std * out_b + mean).to(dtype)
        feat = replace(feat, norm="none", norm_mean=(), norm_std=())
        folded.append("corpus normalisation folded into input_representations.spec_transform and SpecHead.output")
    enc_state["input.proj.weight"], enc_state["input.proj.bias"] = w.to(dtype), b.to(dtype)
    return enc_state, head, enc, feat, folded


def s3prl_caveats(upstream_cfg: dict[str, Any]) -> list[str]:
    """What a user of the written file must know that its config cannot say."""
    notes = []
    if upstream_cfg["transformer"]["downsample_rate"] > 1:
        # s3prl v1 (andi611/Self-Supervised-Speech-Pretraining-and-Representation-Learning,
        # transformer/nn_transformer.py) stacked frames by transformer.downsample_rate; 0.4.18's on-the-fly
        # front-end (upstream/mockingjay/builder.py) has no stacking, so its input width cannot match the weights
        notes.append(f"frame stacking (downsample_rate {upstream_cfg['transformer']['downsample_rate']}): s3prl 0.4.18's "
                     "mockingjay UpstreamExpert does not stack frames and refuses these weights; feed stacked "
                     "features to s3prl's TransformerModel instead")
    if not upstream_cfg["audio"]["input"]["cmvn"]:
        notes.append("cmvn is off: s3prl's expert counts padded frames (log-mel of zeros) as valid, so run it one "
                     "utterance at a time (or on equal lengths) to get the same hidden states as speechprobe")
    return notes


def s3prl_states(ckpt_dir: str | Path) -> dict[str, Any]:
    """The dict to torch.save for the toolkit checkpoint `ckpt_dir` (checked and mapped, nothing written)."""
    meta, tensors = load_checkpoint(ckpt_dir)
    try:
        enc, feat = EncoderConfig.from_dict(meta["encoder"]), FeatureConfig.from_dict(meta["feature"])
    except (KeyError, ValueError, TypeError) as e:
        raise CheckpointError(f"checkpoint {ckpt_dir}: bad or missing encoder/feature config: {e}") from None
    enc_state, head = _group(tensors["model"], "encoder."), _group(tensors["model"], "head.")
    try:
        TransformerEncoder(enc).load_state_dict(enc_state)  # strict: the weights are those of its config
        enc_state, head, enc, feat, folded = fold_front_end(enc_state, head, enc, feat)
        upstream_cfg = s3prl_upstream_config(enc, feat)
        state = ours_to_s3prl(enc_state, enc)
        TransformerEncoder(enc).load_state_dict(s3prl_to_ours(state, enc))  # the file maps back onto our encoder
    except (RuntimeError, ValueError, KeyError) as e:
        raise ValueError(f"cannot export checkpoint {ckpt_dir} to s3prl: {' '.join(str(e).split())[:300]}") from None
    step = meta.get("step")
    states: dict[str, Any] = {
        "Transformer": {k: v.detach().contiguous() for k, v in state.items()},
        "Upstream_Config": upstream_cfg,
        "Config": {"speechprobe_export": {"source": str(Path(ckpt_dir).resolve()),
                                          "model_sha256": meta["files"]["model"]["sha256"],
                                          "upstream": meta.get("upstream"), "preset": meta.get("preset"),
                                          "folded": folded, "caveats": s3prl_caveats(upstream_cfg),
                                          # str(): torch.__version__ is a TorchVersion object
                                          "provenance": {k: str(v) for k, v in provenance("cpu").items()}}},
        "Step": step if isinstance(step, int) else 0,
    }
    if head:
        states["SpecHead"] = {k: v.detach().contiguous() for k, v in head_to_s3prl(head).items()}
    return states


def export_s3prl(ckpt_dir: str | Path, out_path: str | Path, force: bool = False) -> tuple[Path, list[str]]:
    """Write `ckpt_dir` as an s3prl .ckpt at `out_path` (atomically); return the path and the caveats."""
    out_path = Path(out_path)
    if out_path.is_dir():
        raise ValueError(f"output {out_path} is a directory; give a file name such as {out_path / 'states.ckpt'}")
    if out_path.exists() and not force:
        raise FileExistsError(f"output {out_path} exists; choose another name or pass --force to replace it")
    states = s3prl_states(ckpt_dir)
    buf = io.BytesIO()
    torch.save(states, buf)
    atomic_write_bytes(out_path, buf.getvalue())
    return out_path, states["Config"]["speechprobe_export"]["caveats"]


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m pretrain.export_s3prl", description=__doc__.splitlines()[0])
    ap.add_argument("ckpt", type=Path, help="toolkit checkpoint directory (checkpoint.json + safetensors)")
    ap.add_argument("out", type=Path, help="output s3prl .ckpt file")
    ap.add_argument("--force", action="store_true", help="replace an existing output file")
    args = ap.parse_args(argv)
    try:
        out, caveats = export_s3prl(args.ckpt, args.out, force=args.force)
    except (ValueError, FileNotFoundError, FileExistsError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    for note in caveats:
        print(f"note: {note}")
    print(f"wrote {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
