"""What a HEAR `model_file_path` names: an upstream (registry spec or checkpoint) and the rule that picks its output.

Accepted forms:
- "" (the HEAR default): the log-mel baseline `mel`, un-normalised log-mels, one hidden state;
- a toolkit checkpoint directory (holding checkpoint.json): that Mockingjay/AALBERT model, its last layer;
- a registry spec without weights: `mel`, `mel:delta`, `mockingjay_random`, `aalbert_random:base`, ...;
- a `.json` model spec (the only form heareval's runner accepts for weight-free models, since it wants an existing
  path): {"upstream": SPEC, "ckpt": DIR, "layer": RULE, "norm": "none"|"utterance", "feature_from": DIR};
  relative paths are relative to the JSON file. For another toolkit's upstream (`wav2vec2_base`, `s3prl:NAME`, ...)
  "ckpt" is its weights FILE: the only way to give one, since a file as the model path is refused.

`layer`: "last" (default), an index into the N+1 hidden states (0 = the input block, negative counts from the
end), "mean" (the uniform average of all hidden states: a learnable weighted sum at its initialisation, since
HEAR trains nothing inside the embedding model) or "concat" ((N+1) x hidden dims, leaving the weighting to HEAR's
downstream MLP). Weight-free upstreams have no corpus statistics: `norm` chooses un-normalised log-mels ("none",
default) or per-utterance CMVN, or `feature_from` reuses a checkpoint's front-end, corpus statistics included.
"""
from __future__ import annotations

from dataclasses import dataclass, replace
from pathlib import Path
from typing import Literal

from core.config import config_from_dict
from core.io import read_json
from upstream.checkpoint import META_FILE, read_meta
from upstream.features import FeatureConfig
from upstream.interface import Upstream
from upstream.family import Family
from upstream.registry import build_upstream, family_of

LayerRule = Literal["last", "mean", "concat"] | int
LAYER_WORDS = ("last", "mean", "concat")


@dataclass(frozen=True)
class ModelSpec:
    upstream: str = "mel"
    ckpt: str | None = None
    layer: str | int = "last"
    norm: Literal["none", "utterance"] = "none"
    feature_from: str | None = None

    def __post_init__(self) -> None:
        if not (self.layer in LAYER_WORDS or (isinstance(self.layer, int) and not isinstance(self.layer, bool))):
            raise ValueError(f"layer must be one of {', '.join(LAYER_WORDS)} or an integer, got {self.layer!r}")
        if self.norm not in ("none", "utterance"):
            raise ValueError(f"norm must be 'none' or 'utterance', got {self.norm!r}")
        if self.ckpt is not None and self.feature_from is not None:
            raise ValueError("feature_from is for weight-free upstreams; a checkpoint brings its own front-end")
        fam, _ = family_of(self.upstream)  # unknown names list the valid ones
        if fam.takes_weights and self.ckpt is None:
            raise ValueError(_needs_weights(fam, self.upstream))


def _needs_weights(fam: Family, spec: str) -> str:
    """What to give for `spec`, an upstream whose weights are missing. A toolkit checkpoint is a directory, which the
    model path takes directly; another toolkit's weights are one file, which the model path refuses (a file alone
    does not say which upstream reads it), so for those only a .json spec naming both works."""
    name = fam.name
    if fam.pretrainable:  # its weights are a toolkit checkpoint directory
        return (f"upstream {name!r} needs a checkpoint: give its checkpoint directory (holding {META_FILE}) as the "
                f"model path, or \"ckpt\" in a .json model spec")
    convert = (", or convert a Mockingjay/AALBERT file with `python -m pretrain.import_s3prl FILE DIR` and give DIR"
               if name == "s3prl" else "")
    return (f"upstream {spec!r} needs its weights file, and a file is refused as the model path: give a .json model "
            f"spec holding {{\"upstream\": \"{spec}\", \"ckpt\": \"FILE\"}} (FILE relative to the .json) as the model "
            f"path{convert}")


def parse_model_path(model_file_path: str) -> ModelSpec:
    """Resolve a HEAR model_file_path (see the module docstring) into a ModelSpec; errors name the path."""
    path = Path(model_file_path)
    try:
        if model_file_path == "":
            return ModelSpec()
        if path.is_dir():
            if not (path / META_FILE).is_file():
                raise ValueError(f"{path} is a directory without {META_FILE} (not a toolkit checkpoint)")
            meta = read_meta(path)
            return ModelSpec(upstream=str(meta.get("upstream") or "mockingjay"), ckpt=str(path))
        if path.suffix == ".json":
            raw = read_json(path, "HEAR model spec")
            spec = config_from_dict(ModelSpec, raw, str(path))
            rel = {k: str(path.parent / v) for k in ("ckpt", "feature_from") if (v := getattr(spec, k)) is not None}
            return replace(spec, **rel)
        if path.exists():
            hint = (" (an s3prl .ckpt: name it in a .json model spec, {\"upstream\": \"s3prl:NAME\", \"ckpt\": FILE}, "
                    "or convert it with `python -m pretrain.import_s3prl` and give the directory)"
                    if path.suffix == ".ckpt" else "")
            raise ValueError(f"{path} is neither a checkpoint directory nor a .json model spec{hint}")
        return ModelSpec(upstream=model_file_path)
    except (ValueError, TypeError) as e:
        msg = str(e)
        raise ValueError(msg if str(path) in msg else f"HEAR model {model_file_path!r}: {msg}") from None


def build_model_upstream(spec: ModelSpec) -> Upstream:
    """The upstream a ModelSpec names, in eval mode."""
    if spec.ckpt is not None:
        return build_upstream(spec.upstream, ckpt=spec.ckpt).eval()
    fam, preset = family_of(spec.upstream)
    if not fam.takes_front_end:  # another toolkit's model: its own input pipeline, no log-mel front-end to configure
        return build_upstream(spec.upstream).eval()
    if spec.feature_from is not None:
        try:
            feature = FeatureConfig.from_dict(read_meta(spec.feature_from)["feature"])
        except (KeyError, TypeError, ValueError) as e:
            raise ValueError(f"feature_from {spec.feature_from}: no usable front-end config ({e})") from None
    else:
        feature = replace(fam.front_end(preset), norm=spec.norm, norm_mean=(), norm_std=())
    return build_upstream(spec.upstream, feature=feature).eval()
