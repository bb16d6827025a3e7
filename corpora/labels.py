"""Alignments -> per-frame labels, using the front-end's frame arithmetic (core.frames).

Rule: output frame j gets the phone of the segment that contains its centre sample
(core.frames.frame_center_sample, converted to the utterance's own sample rate). A centre that falls in
a gap between segments or outside all of them takes the nearest segment (ties: the earlier one).
"""
from __future__ import annotations

import numpy as np

from core.frames import HOP, SAMPLE_RATE, frame_center_sample, num_frames
from corpora.manifest import Segment, Utterance


def frame_labels(utt: Utterance, phone_index: dict[str, int], hop: int = HOP, downsample: int = 1) -> np.ndarray:
    """(n_frames,) int64 class ids for `utt` as the 16 kHz front-end frames it; raises if unlabelled."""
    if utt.alignment is None or not utt.alignment:
        raise ValueError(f"utterance {utt.id} has no phone alignment")
    n16 = round(utt.num_samples * SAMPLE_RATE / utt.sample_rate)
    n = num_frames(n16, hop, downsample)
    scale = utt.sample_rate / SAMPLE_RATE
    centres = np.array([frame_center_sample(j, hop, downsample) * scale for j in range(n)])
    segs: tuple[Segment, ...] = utt.alignment
    starts = np.array([s.start for s in segs], dtype=np.float64)
    ends = np.array([s.end for s in segs], dtype=np.float64)
    # distance from each centre to each segment (0 inside); argmin picks the containing or nearest one
    dist = np.maximum(starts[None, :] - centres[:, None], 0) + np.maximum(centres[:, None] - (ends[None, :] - 1), 0)
    idx = dist.argmin(axis=1)
    try:
        return np.array([phone_index[segs[i].phone] for i in idx], dtype=np.int64)
    except KeyError as e:
        raise ValueError(f"utterance {utt.id}: phone {e.args[0]!r} is not in the phone vocabulary") from e
