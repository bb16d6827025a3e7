"""s3prl interop: read Mockingjay/AALBERT .ckpt files without running pickle code; map weight keys both ways.

s3prl checkpoints are `torch.save`d dicts that also pickle an argparse.Namespace and an optimizer
schedule object (s3prl 0.4.18, `s3prl/upstream/mockingjay/expert.py` and the pretraining runner that saves them);
s3prl itself loads them with `weights_only=False`, which lets the
file import modules and call functions. `safe_torch_load` instead resolves only tensor-rebuild helpers
and plain containers; every other global becomes an inert `Placeholder` that records its name and state.
Configs are translated in `upstream/s3prl_config.py`. `import_s3prl_hub` is the one place that knows how to import
s3prl's hub under this torchaudio, and `plain_copy` turns a checkpoint into data that loads with weights_only=True.
"""
from __future__ import annotations

import _compat_pickle
import collections
import importlib
import sys
import pickle
import re
import tarfile
import types
import zipfile
from pathlib import Path
from typing import Any, NamedTuple

import torch
from torch import Tensor

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

    def __call__(self, *args: Any, **kwargs: Any) -> "Placeholder":
        # a pickled call of a call's result (e.g. getattr(cls, name)(arg)) stays inert too
        return type(self)(*args, **kwargs)

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


# THE key mapping, used in both directions (`s3prl_to_ours`, `ours_to_s3prl`). Key groups of s3prl 0.4.18
# `s3prl/upstream/mockingjay/model.py`: per layer i, s3prl sub-module -> ours. With pre_layer_norm, s3prl's
# `attention.output.LayerNorm` is applied BEFORE attention and `output.LayerNorm` before the FFN (ours: attn_norm,
# ffn_norm in Pre-LN mode), and each is registered a second time under an alias key (same tensor).
_LAYER_MAP = {
    "attention.output.dense": "attn_out",
    "attention.output.LayerNorm": "attn_norm",
    "intermediate.dense": "ffn_in",
    "output.dense": "ffn_out",
    "output.LayerNorm": "ffn_norm",
}
_QKV = ("query", "key", "value")  # s3prl's separate projections = our fused qkv, in this order
_PRE_LN_ALIASES = {"attention.LayerNorm": "attention.output.LayerNorm", "LayerNorm": "output.LayerNorm"}
_INPUT_MAP = {"input_representations.spec_transform": "input.proj", "input_representations.LayerNorm": "input.norm"}
HEAD_MAP = {"dense": "dense", "LayerNorm": "norm", "output": "out"}  # s3prl SpecHead -> our PredictionHead
_LEAVES = ("weight", "bias")
_LAYER_RE = re.compile(r"^encoder\.layer\.(\d+)\.")


class KeyPair(NamedTuple):
    """One s3prl key and where its tensor lives in ours: `chunk` j of 3 for q/k/v inside the fused qkv.
    `copy_of` names the s3prl key a duplicate must equal (shared layers, Pre-LN aliases); None for originals."""

    s3prl: str
    ours: str
    chunk: int | None = None
    copy_of: str | None = None


def _layer_pairs(i: int, src: int, pre_ln: bool) -> list[KeyPair]:
    """s3prl's `encoder.layer.{i}` keys; their tensors live in our `layers.{src}` (src 0 for shared layers)."""
    mods = [(f"attention.self.{n}", "qkv", j, None) for j, n in enumerate(_QKV)]
    mods += [(s, o, None, None) for s, o in _LAYER_MAP.items()]
    if pre_ln:
        mods += [(alias, _LAYER_MAP[orig], None, orig) for alias, orig in _PRE_LN_ALIASES.items()]
    pairs = []
    for s3prl_mod, ours, chunk, alias_of in mods:
        for leaf in _LEAVES:
            key, orig = f"encoder.layer.{i}.{s3prl_mod}.{leaf}", f"encoder.layer.{src}.{alias_of or s3prl_mod}.{leaf}"
            pairs.append(KeyPair(key, f"layers.{src}.{ours}.{leaf}", chunk, None if orig == key else orig))
    return pairs


def key_pairs(cfg: EncoderConfig) -> list[KeyPair]:
    """Every key of s3prl's `TransformerModel` state dict for `cfg`, paired with our `TransformerEncoder` key."""
    if cfg.embed_dim is not None:
        raise ValueError("s3prl has no factorised input embedding (embed_dim); compose it into one projection first")
    pairs = [KeyPair(f"{s}.{leaf}", f"{o}.{leaf}") for s, o in _INPUT_MAP.items() for leaf in _LEAVES]
    for i in range(cfg.num_layers):
        pairs += _layer_pairs(i, 0 if cfg.share_layers else i, cfg.pre_layer_norm)
    if cfg.pre_layer_norm:  # one output LayerNorm per reported hidden state
        pairs += [KeyPair(f"encoder.LayerNorm.{j}.{leaf}", f"out_norms.{j}.{leaf}")
                  for j in range(cfg.num_layers + 1) for leaf in _LEAVES]
    return pairs


def _legacy_names(state: dict[str, Tensor]) -> dict[str, Tensor]:
    """Old TF-style LayerNorm names gamma/beta -> weight/bias."""
    return {re.sub(r"\.gamma$", ".weight", re.sub(r"\.beta$", ".bias", k)): v for k, v in state.items()}


def _duplicate_problem(p: KeyPair) -> str:
    m = _LAYER_RE.match(p.s3prl)
    if m and p.copy_of and p.copy_of.startswith("encoder.layer.0.") and not p.s3prl.startswith("encoder.layer.0."):
        return f"share_layer is set but layer {m.group(1)} differs from layer 0 ({p.s3prl})"
    return f"{p.s3prl} must be the same tensor as {p.copy_of} (s3prl registers it twice) but differs"


def s3prl_to_ours(state: dict[str, Tensor], cfg: EncoderConfig, where: str = "s3prl state") -> dict[str, Tensor]:
    """Map an s3prl `TransformerModel` state dict to our `TransformerEncoder` keys (q, k, v fused into qkv).

    The key set must be exactly the one `cfg` implies; duplicates (every `layer.{i}` of a shared-layer model,
    the Pre-LN alias keys) must equal their original, and one copy is kept.
    """
    state = _legacy_names(dict(state))
    layers = sorted({int(m.group(1)) for m in map(_LAYER_RE.match, state) if m})
    if layers != list(range(cfg.num_layers)):
        raise ValueError(f"{where}: has layers {layers}, config says {cfg.num_layers}")
    pairs = key_pairs(cfg)
    expected = {p.s3prl for p in pairs}
    unexpected, missing = sorted(set(state) - expected), sorted(expected - set(state))
    if unexpected or missing:
        problems = [f"unexpected keys {unexpected[:3]}"] if unexpected else []
        problems += [f"missing keys {missing[:3]}"] if missing else []
        if any(k.startswith("encoder.LayerNorm.") for k in unexpected + missing):
            problems.append(f"its config says pre_layer_norm={cfg.pre_layer_norm}")
        raise ValueError(f"{where}: weights do not match its transformer config: {'; '.join(problems)}")
    chunks: dict[str, dict[int, Tensor]] = collections.defaultdict(dict)
    out: dict[str, Tensor] = {}
    for p in pairs:
        v = state[p.s3prl]
        if p.copy_of is not None:
            ref = state[p.copy_of]
            if v.shape != ref.shape or not torch.equal(v, ref):
                raise ValueError(f"{where}: {_duplicate_problem(p)}")
            continue
        if p.chunk is None:
            out[p.ours] = v
        else:
            chunks[p.ours][p.chunk] = v
    for key, parts in chunks.items():
        try:
            out[key] = torch.cat([parts[j] for j in range(len(_QKV))])
        except RuntimeError as e:
            raise ValueError(f"{where}: query/key/value of {key} do not fit together: {e}") from None
    return out


def ours_to_s3prl(state: dict[str, Tensor], cfg: EncoderConfig) -> dict[str, Tensor]:
    """Inverse of `s3prl_to_ours`: every s3prl key (every layer of a shared model, Pre-LN aliases included)."""
    out: dict[str, Tensor] = {}
    for p in key_pairs(cfg):
        if p.ours not in state:
            raise ValueError(f"encoder state lacks {p.ours!r} (needed for s3prl's {p.s3prl})")
        v = state[p.ours]
        out[p.s3prl] = v.chunk(len(_QKV))[p.chunk].clone() if p.chunk is not None else v  # own storage
    return out


def head_to_ours(head: dict[str, Tensor], where: str) -> dict[str, Tensor]:
    """s3prl SpecHead keys -> our PredictionHead keys (prefix-free)."""
    out = {}
    for k, v in head.items():
        mod, _, leaf = k.rpartition(".")
        if mod not in HEAD_MAP or leaf not in _LEAVES:
            raise ValueError(f"{where}: unexpected SpecHead key {k!r}")
        out[f"{HEAD_MAP[mod]}.{leaf}"] = v
    return out


def head_to_s3prl(head: dict[str, Tensor]) -> dict[str, Tensor]:
    """Inverse of `head_to_ours`."""
    inv = {o: s for s, o in HEAD_MAP.items()}
    return {f"{inv[k.rpartition('.')[0]]}.{k.rpartition('.')[2]}": v for k, v in head.items()}


def plain_copy(obj: Any, path: str = "") -> tuple[Any, list[str]]:
    """`obj` from safe_torch_load with every Placeholder (a pickled object: an argparse Namespace, an optimizer
    schedule...) replaced by None: (plain data that torch.load(weights_only=True) accepts, the paths replaced)."""
    if isinstance(obj, Placeholder):
        return None, [f"{path or '<root>'} ({obj.origin})"]
    if isinstance(obj, dict):
        out, dropped = type(obj)() if type(obj) in (dict, collections.OrderedDict) else {}, []
        for k, v in obj.items():
            out[k], d = plain_copy(v, f"{path}.{k}" if path else str(k))
            dropped += d
        return out, dropped
    if isinstance(obj, (list, tuple)):
        items = [plain_copy(v, f"{path}[{i}]") for i, v in enumerate(obj)]
        values = [v for v, _ in items]
        return (tuple(values) if isinstance(obj, tuple) else values), [d for _, ds in items for d in ds]
    return obj, []


def import_s3prl_hub() -> types.ModuleType:
    """`import s3prl.hub` under torchaudio 2.11, which removed two things s3prl 0.4.18's hub imports at module level:
    `torchaudio.set_audio_backend` (called by upstream/byol_s/byol_a/common.py) and `torchaudio.sox_effects`
    (imported by upstream/mos_prediction/expert.py). Both are stood in for ONLY while they are missing: the backend
    setter by a no-op (soundfile is the toolkit's audio reader), sox_effects by a module whose every function raises
    when called (no upstream's feature extraction calls one)."""
    import torchaudio

    if not hasattr(torchaudio, "set_audio_backend"):
        torchaudio.set_audio_backend = lambda backend=None: None  # type: ignore[attr-defined]
    if "torchaudio.sox_effects" not in sys.modules:
        try:
            importlib.import_module("torchaudio.sox_effects")
        except ImportError:
            stub = types.ModuleType("torchaudio.sox_effects")

            def _missing(name: str) -> Any:
                if name.startswith("__"):
                    raise AttributeError(name)

                def unavailable(*args: Any, **kwargs: Any) -> Any:
                    raise RuntimeError(f"torchaudio.sox_effects.{name} was removed from torchaudio; s3prl imports it "
                                       f"but speechprobe never calls it (upstream/s3prl_compat.py)")
                return unavailable
            stub.__getattr__ = _missing  # type: ignore[attr-defined]
            sys.modules["torchaudio.sox_effects"] = stub
            torchaudio.sox_effects = stub  # type: ignore[attr-defined]
    return importlib.import_module("s3prl.hub")
