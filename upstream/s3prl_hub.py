"""`s3prl:NAME`: an upstream of s3prl's hub (0.4.18) from a local checkpoint, behind the upstream contract.

    run_benchmark.py --upstream s3prl:mockingjay --ckpt s3prl:mockingjay=states-1000000.ckpt

s3prl builds the model through its hub's `NAME_local(ckpt=PATH)` entry, and its loader reads PATH with
`torch.load(..., weights_only=False)` (s3prl/upstream/mockingjay/builder.py), which lets a file run code. The
user's file never reaches it: it is read with the toolkit's safe unpickler (upstream.s3prl_compat.safe_torch_load),
every pickled object in it (an argparse Namespace, an optimizer schedule: none of which the model needs) is
dropped, the remaining plain data is saved to a private temporary file, checked to load with weights_only=True,
and only that copy is handed to s3prl. Nothing is downloaded.

s3prl is imported lazily, here only, through upstream.s3prl_compat.import_s3prl_hub. Each utterance runs alone
(s3prl's Mockingjay-family experts take a list of waveforms and attend to padding; docs/interop.md), so a batch
equals its utterances one by one. NAMES lists the hub entries this adapter knows the outputs of without running
them (hidden states, width and frame rule read from the checkpoint's config): adding one is a line there.
"""
from __future__ import annotations

import contextlib
import io
import shutil
import tempfile
from collections.abc import Callable
from dataclasses import dataclass
from importlib.metadata import version
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn

from core.io import sha256_file
from upstream.checkpoint import CheckpointError
from upstream.family import Family
from upstream.features import FeatureConfig
from upstream.interface import Upstream, UpstreamShape
from upstream.s3prl_compat import import_s3prl_hub, plain_copy, safe_torch_load
from upstream.s3prl_config import encoder_config_from_s3prl, feature_config_from_s3prl, s3prl_model_config
from upstream.transformer import EncoderConfig


def _transformer_shape(ckpt: dict[str, Any], where: str) -> UpstreamShape:
    """Mockingjay / TERA / Audio ALBERT files: N + 1 hidden states (the input block first), log-mel frames."""
    model_cfg = s3prl_model_config(ckpt, where)
    weights = ckpt.get("Transformer")
    proj = weights.get("input_representations.spec_transform.weight") if isinstance(weights, dict) else None
    if not isinstance(proj, Tensor):
        raise ValueError(f"{where}: no Transformer weights (input_representations.spec_transform.weight)")
    feature = feature_config_from_s3prl(model_cfg, int(proj.shape[1]), where)
    if feature.downsample > 1:
        raise ValueError(f"{where}: stacks {feature.downsample} frames (downsample_rate), which s3prl 0.4.18's expert "
                         f"cannot run; import it instead: python -m pretrain.import_s3prl {where} OUT_DIR")
    enc = encoder_config_from_s3prl(model_cfg, int(proj.shape[1]), where)
    return UpstreamShape(enc.num_layers + 1, enc.hidden_size, feature.frame_rule)


# hub entry NAME (s3prl.hub.NAME_local) -> how its checkpoint tells the outputs' shape
NAMES: dict[str, Callable[[dict[str, Any], str], UpstreamShape]] = {
    "mockingjay": _transformer_shape,
    "tera": _transformer_shape,
    "audio_albert": _transformer_shape,
}


def read_plain(path: Path) -> tuple[dict[str, Any], list[str]]:
    """The checkpoint as plain data (pickled objects dropped, listed); ValueError naming the file."""
    return plain_copy(safe_torch_load(path))


class S3prlUpstream(Upstream):
    """An s3prl hub upstream, run one utterance at a time."""

    def __init__(self, name: str, expert: nn.Module, shape: UpstreamShape) -> None:
        super().__init__()
        self.name, self.expert = name, expert
        self.sample_rate, self.frame_rule = shape.frame_rule.sample_rate, shape.frame_rule
        self.hidden_size, self.num_hidden_states = shape.hidden_size, shape.num_hidden_states

    def cache_fields(self) -> dict[str, Any]:
        return {"model": {"s3prl": version("s3prl"), "entry": f"{self.name}_local"},
                "frame_rule": self.frame_rule.to_dict()}

    def forward(self, wavs: Tensor, wav_lengths: Tensor) -> tuple[list[Tensor], Tensor]:
        per = []
        for i, n in enumerate(wav_lengths.tolist()):
            states = self.expert([wavs[i, : int(n)]])["hidden_states"]  # N+1 tensors (1, T, H)
            want = self.frame_rule.num_frames(int(n))
            if len(states) != self.num_hidden_states or states[0].shape[1:] != (want, self.hidden_size):
                raise ValueError(f"s3prl:{self.name} gave {len(states)} hidden states of {tuple(states[0].shape[1:])} "
                                 f"for {n} samples; its checkpoint's config implies {self.num_hidden_states} of "
                                 f"({want}, {self.hidden_size})")
            per.append([h[0] for h in states])
        lengths = torch.tensor([p[0].shape[0] for p in per], device=wavs.device)
        hidden = [nn.utils.rnn.pad_sequence([p[k] for p in per], batch_first=True)
                  for k in range(self.num_hidden_states)]
        return hidden, lengths


@dataclass(frozen=True)
class S3prlFamily(Family):
    """The registry entry `s3prl`: its presets are the hub names in NAMES; weights from --ckpt s3prl:NAME=PATH."""

    name: str = "s3prl"
    default_preset: str = "mockingjay"
    description = "s3prl hub model, weights from --ckpt s3prl:PRESET=FILE"
    takes_weights = True
    ckpt_per_preset = True

    @property
    def presets(self) -> dict[str, Callable[[dict[str, Any], str], UpstreamShape]]:  # type: ignore[override]
        return NAMES

    def shape(self, preset: str, ckpt: Path | None) -> UpstreamShape:
        if ckpt is None:
            raise ValueError(f"s3prl:{preset} needs its checkpoint: --ckpt s3prl:{preset}=PATH")
        return NAMES[preset](read_plain(Path(ckpt))[0], str(ckpt))

    def check_ckpt(self, key: str, path: Path) -> None:
        """Planning-time check of --ckpt s3prl:NAME=PATH: a known hub name, the file readable without running code,
        its config understood."""
        hub_name = key.partition(":")[2]
        if hub_name not in NAMES:
            raise ValueError(f"--ckpt {key}={path}: name the hub entry as s3prl:NAME, NAME one of {', '.join(NAMES)}")
        try:
            self.shape(hub_name, path)
        except (FileNotFoundError, ValueError) as e:
            raise ValueError(f"--ckpt {key}={path}: {e}") from None

    def identity_hash(self, preset: str, ckpt: Path | None, model: Upstream | None = None) -> str:
        if ckpt is None:
            raise ValueError(f"s3prl:{preset} needs its checkpoint: --ckpt s3prl:{preset}=PATH")
        return sha256_file(ckpt)

    def build(self, preset: str, ckpt: Path | None = None, feature: FeatureConfig | None = None,
              encoder: EncoderConfig | None = None) -> S3prlUpstream:
        self._own_front_end(feature, encoder)
        if ckpt is None:
            raise ValueError(f"s3prl:{preset} needs its checkpoint: --ckpt s3prl:{preset}=PATH")
        state, _ = read_plain(Path(ckpt))
        shape = NAMES[preset](state, str(ckpt))
        hub = import_s3prl_hub()
        tmp = Path(tempfile.mkdtemp(prefix="speechprobe-s3prl-"))
        try:
            plain = tmp / "plain.ckpt"
            torch.save(state, plain)
            torch.load(plain, map_location="cpu", weights_only=True)  # the copy s3prl reads holds data only
            with torch.random.fork_rng(devices=[]), contextlib.redirect_stdout(io.StringIO()):
                expert = getattr(hub, f"{preset}_local")(ckpt=str(plain))  # it runs one random input: RNG forked
        except (RuntimeError, KeyError, TypeError, AssertionError) as e:
            raise CheckpointError(f"--ckpt s3prl:{preset}={ckpt}: s3prl's {preset}_local could not build from it: "
                                  f"{type(e).__name__}: {e}") from e
        finally:
            shutil.rmtree(tmp, ignore_errors=True)
        return S3prlUpstream(preset, expert, shape).eval()
