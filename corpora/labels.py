"""Alignments -> per-frame labels, with the frame rule of the upstream that frames the audio (core.frames).

Rule: output frame j gets the phone of the segment that contains its centre sample (FrameRule.centres, converted
from the upstream's sample rate to the utterance's own). A centre that falls in a gap between segments or outside
all of them takes the nearest segment (ties: the earlier one).
"""
from __future__ import annotations

import numpy as np

from core.frames import LOG_MEL, FrameRule
from corpora.manifest import Utterance


def frame_labels(utt: Utterance, phone_index: dict[str, int], rule: FrameRule = LOG_MEL) -> np.ndarray:
    """(n_frames,) int64 class ids for `utt` as an upstream with frame rule `rule` frames it (its audio resampled
    to rule.sample_rate); raises if unlabelled."""
    if utt.alignment is None or not utt.alignment:
        raise ValueError(f"utterance {utt.id} has no phone alignment")
    n = rule.num_frames_of(utt.num_samples, utt.sample_rate)
    centres = rule.centres(n) * (utt.sample_rate / rule.sample_rate)
    phones = utt.alignment.phones
    starts, ends = utt.alignment.bounds.astype(np.float64)
    # distance from each centre to each segment (0 inside); argmin picks the containing or nearest one
    dist = np.maximum(starts[None, :] - centres[:, None], 0) + np.maximum(centres[:, None] - (ends[None, :] - 1), 0)
    idx = dist.argmin(axis=1)
    try:
        return np.array([phone_index[phones[i]] for i in idx], dtype=np.int64)
    except KeyError as e:
        raise ValueError(f"utterance {utt.id}: phone {e.args[0]!r} is not in the phone vocabulary") from e
