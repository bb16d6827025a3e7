"""s3prl interop: read Mockingjay/AALBERT .ckpt files without running pickle code, map keys and configs to ours.

s3prl checkpoints are `torch.save`d dicts that also pickle an argparse.Namespace and an optimizer
schedule object (s3prl 0.4.18, `s3prl/upstream/mockingjay/expert.py` and the pretraining runner that saves them);
s3prl itself loads them with `weights_only=False`, which lets the
file import modules and call functions. `safe_torch_load` instead resolves only tensor-rebuild helpers
and plain containers; every other global becomes an inert `Placeholder` that records its name and state.
"""
from __future__ import annotations

import _compat_pickle
import collections
import pickle
import re
import tarfile
import types
import zipfile
from pathlib import Path
from typing import Any

import torch
from torch import Tensor

from upstream.features import FeatureConfig
from upstream.transformer import EncoderConfig

# Globals a tensor checkpoint legitimately needs. Everything else is replaced, never imported.
_ALLOWED: dict[tuple[str, str], Any] = {
    ("collections", "OrderedDict"): collections.OrderedDict,
    ("builtins", "set"): set,
    ("builtins", "frozenset"): frozenset,
    ("builtins", "dict"): dict,
    ("builtins", "list"): list,
    ("builtins", "tuple"): tuple,
    ("builtins", "slice"): slice,
    ("builtins", "complex"): complex,
    ("torch._utils", "_rebuild_tensor"): torch._utils._rebuild_tensor,
    ("torch._utils", "_rebuild_tensor_v2"): torch._utils._rebuild_tensor_v2,
    ("torch._utils", "_rebuild_parameter"): torch._utils._rebuild_parameter,
    ("torch._utils", "_rebuild_parameter_with_state"): torch._utils._rebuild_parameter_with_state,
    ("torch", "Size"): torch.Size,
    ("torch", "device"): torch.device,
    **{("torch", n): getattr(torch, n) for n in ("float32", "float64", "float16", "bfloat16", "int64", "int32",
                                                   "uint8", "bool")},
}


class Placeholder:
    """Stands in for any non-allowed pickled global: accepts any arguments and state, executes nothing."""

    origin = "?"

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        self.args, self.kwargs, self.state = args, kwargs, None

    def __new__(cls, *args: Any, **kwargs: Any) -> "Placeholder":
        obj = super().__new__(cls)
        obj.args, obj.kwargs, obj.state = args, kwargs, None
        return obj

    def __setstate__(self, state: Any) -> None:
        self.state = state

    def __repr__(self) -> str:
        return f"<unloaded {self.origin}>"


def _placeholder(module: str, name: str) -> type[Placeholder]:
    return type(name, (Placeholder,), {"origin": f"{module}.{name}"})


class SafeUnpickler(pickle.Unpickler):
    """Unpickler whose `find_class` never imports: allow-listed globals or an inert Placeholder subclass."""

    def find_class(self, module: str, name: str) -> Any:
        # torch.save pickles with protocol 2, which writes Python 2 names (__builtin__.set): map them as
        # pickle's own find_class does (fix_imports), for the allow-list and for the placeholder's name
        module, name = _compat_pickle.NAME_MAPPING.get((module, name), (module, name))
        module = _compat_pickle.IMPORT_MAPPING.get(module, module)
        return _ALLOWED.get((module, name)) or _placeholder(module, name)


def _load(file: Any, **kwargs: Any) -> Any:
    return SafeUnpickler(file, **kwargs).load()


# torch.load wants a module-like object exposing Unpickler and load.
safe_pickle = types.SimpleNamespace(__name__="safe_pickle", Unpickler=SafeUnpickler, load=_load)


def safe_torch_load(path: str | Path) -> dict[str, Any]:
    """torch.load a .ckpt with SafeUnpickler on the CPU; errors name the file."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"s3prl checkpoint not found: {path}")
    if not zipfile.is_zipfile(path) and tarfile.is_tarfile(path):
        # torch < 0.4 tar checkpoints are extracted to disk before unpickling (links included); s3prl never wrote them
        raise ValueError(f"cannot read s3prl checkpoint {path}: a tar archive (torch < 0.4 format) is not supported")
    try:
        obj = torch.load(str(path), map_location="cpu", pickle_module=safe_pickle, weights_only=False)
    except Exception as e:  # torch raises RuntimeError/UnpicklingError/EOFError for bad files
        raise ValueError(f"cannot read s3prl checkpoint {path}: {type(e).__name__}: {e}") from e
    if not isinstance(obj, dict):
        raise ValueError(f"s3prl checkpoint {path}: expected a dict, got {type(obj).__name__}")
    return obj


# s3prl sub-module name -> ours, per layer (key groups of s3prl 0.4.18 `s3prl/upstream/mockingjay/model.py`).
_LAYER_MAP = {
    "attention.output.dense": "attn_out",
    "attention.output.LayerNorm": "attn_norm",
    "intermediate.dense": "ffn_in",
    "output.dense": "ffn_out",
    "output.LayerNorm": "ffn_norm",
}
_INPUT_MAP = {"input_representations.spec_transform": "input.proj", "input_representations.LayerNorm": "input.norm"}
HEAD_MAP = {"dense": "dense", "LayerNorm": "norm", "output": "out"}
_LAYER_RE = re.compile(r"^encoder\.layer\.(\d+)\.(.+)\.(weight|bias)$")


def _legacy_names(state: dict[str, Tensor]) -> dict[str, Tensor]:
    """Old TF-style LayerNorm names gamma/beta -> weight/bias."""
    return {re.sub(r"\.gamma$", ".weight", re.sub(r"\.beta$", ".bias", k)): v for k, v in state.items()}


def s3prl_to_ours(state: dict[str, Tensor], cfg: EncoderConfig, where: str = "s3prl state") -> dict[str, Tensor]:
    """Map an s3prl `TransformerModel` state dict to our `TransformerEncoder` keys (q, k, v fused into qkv).

    Shared-layer (AALBERT) models list every `layer.{i}`: all copies must be identical and one is kept.
    """
    state = _legacy_names(dict(state))
    out: dict[str, Tensor] = {}
    layers: dict[int, dict[str, Tensor]] = collections.defaultdict(dict)
    for key, v in state.items():
        m = _LAYER_RE.match(key)
        if m:
            layers[int(m.group(1))][f"{m.group(2)}.{m.group(3)}"] = v
            continue
        prefix, _, leaf = key.rpartition(".")
        if prefix not in _INPUT_MAP:
            raise ValueError(f"{where}: unexpected key {key!r} (pre-LN or non-Mockingjay model?)")
        out[f"{_INPUT_MAP[prefix]}.{leaf}"] = v
    if sorted(layers) != list(range(cfg.num_layers)):
        raise ValueError(f"{where}: has layers {sorted(layers)}, config says {cfg.num_layers}")
    if cfg.share_layers:
        for i in range(1, cfg.num_layers):
            if any(not torch.equal(layers[i][k], layers[0][k]) for k in layers[0]):
                raise ValueError(f"{where}: share_layer is set but layer {i} differs from layer 0")
        layers = {0: layers[0]}
    for i, sub in layers.items():
        for leaf in ("weight", "bias"):
            try:
                out[f"layers.{i}.qkv.{leaf}"] = torch.cat([sub.pop(f"attention.self.{n}.{leaf}")
                                                           for n in ("query", "key", "value")])
            except KeyError as e:
                raise ValueError(f"{where}: layer {i} lacks attention weight {e}") from e
        for name, v in sub.items():
            mod, _, leaf = name.rpartition(".")
            if mod not in _LAYER_MAP:
                raise ValueError(f"{where}: unexpected key encoder.layer.{i}.{name}")
            out[f"layers.{i}.{_LAYER_MAP[mod]}.{leaf}"] = v
    return out


def ours_to_s3prl(state: dict[str, Tensor], cfg: EncoderConfig) -> dict[str, Tensor]:
    """Inverse of `s3prl_to_ours` (every layer listed, as s3prl stores shared models)."""
    out: dict[str, Tensor] = {}
    inv_in = {v: k for k, v in _INPUT_MAP.items()}
    inv_layer = {v: k for k, v in _LAYER_MAP.items()}
    for key, v in state.items():
        parts = key.split(".")
        if parts[0] == "input":
            out[f"{inv_in['.'.join(parts[:2])]}.{parts[-1]}"] = v
    for i in range(cfg.num_layers):
        src = 0 if cfg.share_layers else i
        for key, v in state.items():
            parts = key.split(".")
            if parts[0] != "layers" or int(parts[1]) != src:
                continue
            mod, leaf = parts[2], parts[3]
            if mod == "qkv":
                for name, chunk in zip(("query", "key", "value"), v.chunk(3)):
                    out[f"encoder.layer.{i}.attention.self.{name}.{leaf}"] = chunk
            else:
                out[f"encoder.layer.{i}.{inv_layer[mod]}.{leaf}"] = v
    return out


def s3prl_model_config(ckpt: dict[str, Any], where: str = "checkpoint") -> dict[str, Any]:
    """The upstream (model) config dict: `Upstream_Config` (since late 2021) or `Config` (older files)."""
    for key in ("Upstream_Config", "Config"):
        c = ckpt.get(key)
        if isinstance(c, dict) and "transformer" in c:
            return c
    raise ValueError(f"{where}: no model config (neither Upstream_Config nor Config holds a 'transformer' section)")


def encoder_config_from_s3prl(model_cfg: dict[str, Any], input_dim: int, where: str = "checkpoint") -> EncoderConfig:
    try:
        return _encoder_config(model_cfg, input_dim, where)
    except (KeyError, TypeError, ValueError, AttributeError) as e:  # a field missing or of the wrong type
        msg = str(e)
        raise ValueError(msg if msg.startswith(where) else f"{where}: bad transformer config ({type(e).__name__}: "
                                                           f"{msg})") from None


def _encoder_config(model_cfg: dict[str, Any], input_dim: int, where: str) -> EncoderConfig:
    t = model_cfg["transformer"]
    if t.get("pre_layer_norm", False):
        raise ValueError(f"{where}: pre_layer_norm models are not supported (ours is post-LN as in Mockingjay)")
    if str(t.get("hidden_act", "gelu")) != "gelu":
        raise ValueError(f"{where}: hidden_act {t.get('hidden_act')!r} is not supported (only gelu)")
    try:
        return EncoderConfig(input_dim=input_dim, hidden_size=int(t["hidden_size"]),
                             num_layers=int(t["num_hidden_layers"]), num_heads=int(t["num_attention_heads"]),
                             intermediate_size=int(t["intermediate_size"]),
                             dropout=float(t.get("hidden_dropout_prob", 0.1)),
                             attention_dropout=float(t.get("attention_probs_dropout_prob", 0.1)),
                             layer_norm_eps=float(t.get("layer_norm_eps", 1e-12)),
                             initializer_range=float(t.get("initializer_range", 0.02)),
                             share_layers=bool(t.get("share_layer", False)))
    except KeyError as e:
        raise ValueError(f"{where}: transformer config lacks {e}") from e


def feature_config_from_s3prl(model_cfg: dict[str, Any], input_dim: int, where: str = "checkpoint") -> FeatureConfig:
    """s3prl's on-the-fly log-mel settings; norm='utterance' because s3prl applies per-utterance CMVN."""
    try:
        return _feature_config(model_cfg, input_dim, where)
    except (KeyError, TypeError, ValueError, AttributeError) as e:
        msg = str(e)
        raise ValueError(msg if msg.startswith(where) else f"{where}: bad audio config ({type(e).__name__}: "
                                                           f"{msg})") from None


def _feature_config(model_cfg: dict[str, Any], input_dim: int, where: str) -> FeatureConfig:
    audio = model_cfg.get("audio") or {}
    inp = audio.get("input") or {}
    if inp.get("feat_type", "mel") != "mel":
        raise ValueError(f"{where}: input features {inp.get('feat_type')!r} are not supported (only mel)")
    delta = int(inp.get("delta", 0))
    downsample = int(model_cfg["transformer"].get("downsample_rate", 1))
    n_mels = int(audio.get("n_mels", input_dim // (downsample * (1 + delta))))
    feat = FeatureConfig(n_mels=n_mels, deltas=delta > 0, delta_order=max(delta, 1), downsample=downsample,
                         target_dbfs=float(audio["target_level"]) if "target_level" in audio else -25.0,
                         norm="utterance" if inp.get("cmvn", True) else "none")
    if feat.feature_dim != input_dim:
        raise ValueError(f"{where}: feature config gives {feat.feature_dim}-dim input, weights expect {input_dim}")
    return feat
