"""Layer modes: which hidden states a probe reads (last, layer=K, weighted_sum) or whether it fine-tunes."""
from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

import torch
from torch import Tensor, nn

ModeKind = Literal["last", "layer", "weighted_sum", "finetune"]
MODE_CHOICES = ("last", "layer=K", "layers", "weighted_sum", "finetune")


@dataclass(frozen=True)
class LayerMode:
    """A parsed mode. `layer` is the hidden-state index for last/layer/finetune, None for weighted_sum."""

    kind: ModeKind
    layer: int | None = None

    @property
    def frozen(self) -> bool:
        return self.kind != "finetune"

    @property
    def label(self) -> str:
        return f"layer={self.layer}" if self.kind == "layer" else self.kind

    def layers_read(self, num_hidden_states: int) -> list[int]:
        """Hidden-state indices this mode needs (all of them for weighted_sum)."""
        return list(range(num_hidden_states)) if self.kind == "weighted_sum" else [self.resolved_layer(num_hidden_states)]

    def resolved_layer(self, num_hidden_states: int) -> int:
        """The layer column of a result row: the index read, or -1 for weighted_sum."""
        if self.kind == "weighted_sum":
            return -1
        if self.kind in ("last", "finetune"):
            return num_hidden_states - 1
        assert self.layer is not None
        if not 0 <= self.layer < num_hidden_states:
            raise ValueError(f"--mode layer={self.layer}: this upstream has hidden states 0..{num_hidden_states - 1}")
        return self.layer


def parse_modes(text: str, num_hidden_states: int | None = None) -> list[LayerMode]:
    """'last,layer=2,weighted_sum' -> modes. 'layers' expands to every hidden state (needs the count)."""
    out: list[LayerMode] = []
    for item in (t.strip() for t in text.split(",")):
        if not item:
            continue
        if item in ("last", "weighted_sum", "finetune"):
            out.append(LayerMode(item))  # type: ignore[arg-type]
        elif item == "layers":
            if num_hidden_states is None:
                raise ValueError("--mode layers needs the upstream's number of hidden states")
            out.extend(LayerMode("layer", k) for k in range(num_hidden_states))
        elif item.startswith("layer="):
            try:
                k = int(item.removeprefix("layer="))
            except ValueError:
                raise ValueError(f"--mode {item!r}: K must be an integer (e.g. layer=2)") from None
            if k < 0:
                raise ValueError(f"--mode {item!r}: K must be >= 0")
            out.append(LayerMode("layer", k))
        else:
            raise ValueError(f"unknown mode {item!r}; valid: {', '.join(MODE_CHOICES)}")
    if not out:
        raise ValueError(f"--mode is empty; valid: {', '.join(MODE_CHOICES)}")
    return list(dict.fromkeys(out))


class Featurizer(nn.Module):
    """Hidden states (each (n_frames, D), flat) -> one (n_frames, D) tensor: a fixed layer, or a softmax-weighted sum over all of them.

    Weighted sum (SUPERB / s3prl featurizer): one weight per hidden state, initialised to zero (uniform
    after the softmax) and trained with the probe.
    """

    def __init__(self, mode: LayerMode, num_hidden_states: int) -> None:
        super().__init__()
        self.mode = mode
        self.num_hidden_states = num_hidden_states
        self.weights = nn.Parameter(torch.zeros(num_hidden_states)) if mode.kind == "weighted_sum" else None

    def forward(self, hidden: Tensor) -> Tensor:
        """`hidden` (layers, n_frames, D) stacks exactly the layers of `mode.layers_read` (cached source) or all
        of them (live source)."""
        if self.weights is None:
            return hidden[0] if len(hidden) == 1 else hidden[self.mode.resolved_layer(self.num_hidden_states)]
        if len(hidden) != self.num_hidden_states:
            raise ValueError(f"weighted_sum expects {self.num_hidden_states} hidden states, got {len(hidden)}")
        w = self.weights.softmax(0)
        L, n, d = hidden.shape
        # (L,) @ (L, n * D): a matrix-vector product on a view, so neither direction of autograd copies the stack
        return torch.matmul(w.to(hidden.dtype), hidden.reshape(L, n * d)).view(n, d)

    def layer_weights(self) -> list[float] | None:
        return None if self.weights is None else [float(x) for x in self.weights.detach().softmax(0)]
