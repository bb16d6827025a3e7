"""wav2vec 2.0, HuBERT and WavLM from torchaudio.models as upstreams (torchaudio 2.11 `models/wav2vec2/model.py`).

Hidden states: the feature projection's output (the CNN features projected to the Transformer width, the
Transformer's input before its positional convolution) then every Transformer layer's output, as torchaudio's
`Wav2Vec2Model.extract_features` returns them: N + 1 states of `encoder_embed_dim`. Frames: the CNN feature encoder's
valid convolutions (core.frames.conv_rule), 20 ms apart with the default layers.

Padding never leaks: the CNN runs on each utterance alone, since the base models' first layer normalises each
channel over all time steps (GroupNorm, `extractor_mode="group_norm"`) and so would see the padding of a batch;
the Transformer then runs on the padded batch with torchaudio's own key mask. WavLM's attention asserts it gets no
mask (torchaudio 2.11 `wavlm_attention.py`, pytorch/audio#3700), so a WavLM batch of unequal lengths runs its
Transformer one utterance at a time.

Weights: the `.pth` state dicts torchaudio's pipelines download (e.g. `wav2vec2_fairseq_base_ls960.pth`,
`hubert_fairseq_base_ls960.pth`, `wavlm_base.pth`; an ASR bundle's file loads too, its `aux.*` CTC head left out),
given as a local file and read with `torch.load(..., weights_only=True)`; nothing is downloaded. The base bundles feed the raw waveform
(`_normalize_waveform=False` in torchaudio's `pipelines/_wav2vec2/impl.py`), as this module does.
"""
from __future__ import annotations

import pickle
import re
import zipfile
from collections.abc import Mapping
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any, Literal

import torch
import torchaudio
from torch import Tensor, nn

from core.frames import SAMPLE_RATE, FrameRule, conv_rule
from core.io import sha256_file, sha256_json
from upstream.checkpoint import CheckpointError
from upstream.family import Family
from upstream.features import FeatureConfig
from upstream.interface import RANDOM_INIT_SEED, Upstream, UpstreamShape
from upstream.s3prl_compat import safe_torch_load
from upstream.s3prl_config import is_s3prl_checkpoint
from upstream.s3prl_hub import NAMES
from upstream.transformer import EncoderConfig

DEFAULT_CONV = ((512, 10, 5),) + ((512, 3, 2),) * 4 + ((512, 2, 2),) * 2  # torchaudio's default feature encoder


@dataclass(frozen=True)
class Arch:
    """Arguments of a torchaudio factory (`wav2vec2_model` or `wavlm_model`); dropouts are irrelevant in eval mode
    but recorded, as the factories take them."""

    factory: Literal["wav2vec2_model", "wavlm_model"]
    kwargs: dict[str, Any] = field(default_factory=dict)

    @property
    def conv(self) -> tuple[tuple[int, int, int], ...]:
        return tuple(tuple(c) for c in (self.kwargs.get("extractor_conv_layer_config") or DEFAULT_CONV))

    def shape(self) -> UpstreamShape:
        rule = conv_rule([(k, s) for _, k, s in self.conv], SAMPLE_RATE)
        return UpstreamShape(self.kwargs["encoder_num_layers"] + 1, self.kwargs["encoder_embed_dim"], rule)

    def to_dict(self) -> dict[str, Any]:
        return {"factory": self.factory, **{k: [list(c) for c in v] if k == "extractor_conv_layer_config" and v else v
                                           for k, v in self.kwargs.items()}}

    def build(self) -> nn.Module:
        return getattr(torchaudio.models, self.factory)(**self.kwargs)


def _base(hubert: bool = False, wavlm: bool = False) -> Arch:
    """torchaudio's wav2vec2_base / hubert_base / wavlm_base, every argument spelled out (their defaults)."""
    kw: dict[str, Any] = dict(
        extractor_mode="group_norm", extractor_conv_layer_config=None, extractor_conv_bias=False,
        encoder_embed_dim=768, encoder_projection_dropout=0.1, encoder_pos_conv_kernel=128, encoder_pos_conv_groups=16,
        encoder_num_layers=12, encoder_num_heads=12, encoder_attention_dropout=0.1, encoder_ff_interm_features=3072,
        encoder_ff_interm_dropout=0.0 if hubert else 0.1, encoder_dropout=0.1, encoder_layer_norm_first=False,
        encoder_layer_drop=0.05 if hubert else 0.1, aux_num_out=None)
    if wavlm:
        kw.update(encoder_num_buckets=320, encoder_max_distance=800)
    return Arch("wavlm_model" if wavlm else "wav2vec2_model", kw)


def _tiny(arch: Arch) -> Arch:
    """The same factory and frame rule at test size: 32 channels, 2 layers of width 32 (seconds on a CPU)."""
    kw = {**arch.kwargs, "extractor_conv_layer_config": [(32, k, s) for _, k, s in DEFAULT_CONV],
          "encoder_embed_dim": 32, "encoder_pos_conv_kernel": 16, "encoder_pos_conv_groups": 4, "encoder_num_layers": 2,
          "encoder_num_heads": 2, "encoder_ff_interm_features": 64}
    if arch.factory == "wavlm_model":
        kw.update(encoder_num_buckets=16, encoder_max_distance=64)
    return Arch(arch.factory, kw)


WAV2VEC2, HUBERT, WAVLM = _base(), _base(hubert=True), _base(wavlm=True)
PRESETS: dict[str, dict[str, Arch]] = {  # family -> preset -> architecture; "tiny" is for tests
    "wav2vec2": {"base": WAV2VEC2, "tiny": _tiny(WAV2VEC2)},
    "hubert": {"base": HUBERT, "tiny": _tiny(HUBERT)},
    "wavlm": {"base": WAVLM, "tiny": _tiny(WAVLM)},
}


class TorchaudioUpstream(Upstream):
    """A torchaudio Wav2Vec2Model (wav2vec 2.0, HuBERT or WavLM) behind the upstream contract."""

    def __init__(self, arch: Arch, model: nn.Module) -> None:
        super().__init__()
        self.arch, self.model = arch, model
        shape = arch.shape()
        self.sample_rate, self.frame_rule = SAMPLE_RATE, shape.frame_rule
        self.hidden_size, self.num_hidden_states = shape.hidden_size, shape.num_hidden_states
        self.masked_attention = arch.factory != "wavlm_model"  # pytorch/audio#3700

    def cache_fields(self) -> dict[str, Any]:
        return {"model": self.arch.to_dict(), "frame_rule": self.frame_rule.to_dict()}

    def _cnn(self, wav: Tensor) -> Tensor:
        """One utterance (S,) -> CNN features (T, C), T = frame_rule.num_frames(S) (0 below one receptive field)."""
        n = self.frame_rule.num_frames(wav.numel())
        if n == 0:
            return wav.new_zeros(0, self.arch.conv[-1][0])
        feats, _ = self.model.feature_extractor(wav[None], None)  # (1, T, C)
        return feats[0]

    def forward(self, wavs: Tensor, wav_lengths: Tensor) -> tuple[list[Tensor], Tensor]:
        feats = [self._cnn(wavs[i, : int(n)]) for i, n in enumerate(wav_lengths.tolist())]
        lengths = torch.tensor([f.shape[0] for f in feats], device=wavs.device)
        x = nn.utils.rnn.pad_sequence(feats, batch_first=True)  # (B, T, C)
        valid = torch.arange(x.shape[1], device=x.device)[None, :] < lengths[:, None]  # (B, T)
        x = self.model.encoder.feature_projection(x) * valid.unsqueeze(-1)  # (B, T, D), padding zero
        uneven = bool((lengths != x.shape[1]).any())
        if uneven and not self.masked_attention:
            per = [self._layers(x[i: i + 1, : int(n)], None) for i, n in enumerate(lengths.tolist())]
            layers = [nn.utils.rnn.pad_sequence([p[k][0] for p in per], batch_first=True) for k in range(len(per[0]))]
        else:
            # torchaudio's key mask (components.Encoder._preprocess): -10000 on padded keys
            mask = (-10000.0 * (~valid)[:, None, None, :].to(x.dtype)).expand(-1, 1, x.shape[1], -1) if uneven else None
            layers = self._layers(x, mask)
        keep = valid.unsqueeze(-1).to(x.dtype)
        return [x] + [h * keep for h in layers], lengths

    def _layers(self, x: Tensor, mask: Tensor | None) -> list[Tensor]:
        if x.shape[1] == 0:
            return [x] * (self.num_hidden_states - 1)
        return self.model.encoder.transformer.get_intermediate_outputs(x, mask)


@dataclass(frozen=True)
class TorchaudioFamily(Family):
    """One torchaudio model family: weights from a local `.pth` file, or (takes_weights=False) its random-init
    control, seeded (the same weights every time). A new model is its presets (an Arch each) and one registry line."""

    name: str
    presets: Mapping[str, Arch]
    takes_weights: bool = True
    control: str | None = None
    default_preset: str = "base"

    @property
    def description(self) -> str:  # type: ignore[override]
        return f"torchaudio model, weights from --ckpt {self.name}=FILE" if self.takes_weights else \
            "torchaudio model, random-init control"

    def random_control(self) -> TorchaudioFamily:
        if self.control is None:
            raise ValueError(f"upstream {self.name!r} has no random-init control")
        return replace(self, name=self.control, takes_weights=False, control=None)

    def shape(self, preset: str, ckpt: Path | None) -> UpstreamShape:
        return self.presets[preset].shape()

    def check_ckpt(self, key: str, path: Path) -> None:
        """Planning-time check of --ckpt NAME=PATH (the weights are checked when loaded)."""
        if not self.takes_weights:
            raise ValueError(f"--ckpt {key}={path}: {key} is a random-init control and takes no weights")
        if not path.is_file() or not zipfile.is_zipfile(path):
            raise ValueError(f"--ckpt {key}={path}: not a torch .pth file (a state dict saved by torch.save, e.g. "
                             f"the file of torchaudio's bundle for {self.name})")

    def identity_hash(self, preset: str, ckpt: Path | None, model: Upstream | None = None) -> str:
        if ckpt is not None:
            return sha256_file(ckpt)
        return sha256_json({"arch": self.presets[preset].to_dict(), "seed": RANDOM_INIT_SEED})

    def build(self, preset: str, ckpt: Path | None = None, feature: FeatureConfig | None = None,
              encoder: EncoderConfig | None = None) -> TorchaudioUpstream:
        self._own_front_end(feature, encoder)
        arch = self.presets[preset]
        if self.takes_weights and ckpt is None:
            control = f"; {self.control} is its random-init control" if self.control else ""
            raise ValueError(f"upstream {self.name!r} needs its weights: --ckpt {self.name}=PATH to torchaudio's .pth "
                             f"state dict (nothing is downloaded){control}")
        if not self.takes_weights:
            self._no_weights(ckpt)
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(RANDOM_INIT_SEED)
            model = arch.build()
        if ckpt is not None:
            load_weights(model, Path(ckpt))
        return TorchaudioUpstream(arch, model).eval()


def _s3prl_checkpoint(path: Path) -> str:
    """The one-line error for an s3prl .ckpt given as torchaudio weights: what reads it instead."""
    return (f"--ckpt {path}: cannot read it as torchaudio weights: it is an s3prl checkpoint, not a state dict; "
            f"run it with `--upstream s3prl:NAME --ckpt s3prl:NAME={path}` (NAME: {', '.join(NAMES)}) or convert "
            f"it with `python -m pretrain.import_s3prl {path} DIR`")


def _refused_pickle(path: Path) -> str | None:
    """The error for a torch file weights_only=True refuses because it pickles Python objects (e.g. s3prl's argparse
    Namespace); None when the file is no readable torch file at all. torch's own message spans lines and carries
    terminal colour codes, so it is replaced. The file is re-read with the toolkit's safe unpickler (no pickled code
    runs) only to tell the two apart and to recognise an s3prl checkpoint."""
    try:
        obj = safe_torch_load(path)
    except (ValueError, FileNotFoundError):
        return None
    if is_s3prl_checkpoint(obj):
        return _s3prl_checkpoint(path)
    return (f"--ckpt {path}: cannot read it as torchaudio weights: a pickled file torch refuses to load with "
            f"weights_only=True (it holds Python objects, not only tensors; none of its code was run); "
            f"--ckpt NAME=FILE reads a state dict saved by torch.save, such as torchaudio's bundle .pth")


def load_weights(model: nn.Module, path: Path) -> None:
    """Load a torchaudio state dict with weights_only=True (no pickled code runs); CheckpointError naming the file."""
    try:
        state = torch.load(str(path), map_location="cpu", weights_only=True)
    except Exception as e:  # torch raises UnpicklingError/RuntimeError/EOFError/OSError for bad files
        if isinstance(e, pickle.UnpicklingError) and (refused := _refused_pickle(path)) is not None:
            raise CheckpointError(refused) from e
        first = re.sub(r"\x1b\[[0-9;]*m", "", str(e).splitlines()[0]) if str(e) else ""  # no terminal colour codes
        raise CheckpointError(f"--ckpt {path}: cannot read it as a torch state dict: {type(e).__name__}: "
                              f"{first}") from e
    if is_s3prl_checkpoint(state):  # our export: plain data, but not weights
        raise CheckpointError(_s3prl_checkpoint(path))
    if not isinstance(state, dict) or not all(isinstance(v, Tensor) for v in state.values()):
        raise CheckpointError(f"--ckpt {path}: expected a state dict (names -> tensors), got {type(state).__name__}")
    state = {k: v for k, v in state.items() if not k.startswith("aux.")}  # an ASR bundle's CTC head: not upstream
    try:
        missing, unexpected = model.load_state_dict(state, strict=False)
    except RuntimeError as e:  # shape mismatches raise even when strict=False
        raise CheckpointError(f"--ckpt {path}: weights do not fit the preset's architecture: "
                              f"{str(e).splitlines()[1].strip() if len(str(e).splitlines()) > 1 else e}") from e
    if missing or unexpected:
        raise CheckpointError(f"--ckpt {path}: weights do not fit the preset's architecture: missing {missing[:3]}, "
                              f"unexpected {unexpected[:3]}")
