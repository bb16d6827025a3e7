"""THE task registry: each probe task is one declarative spec (labels, level, head, loss, decoder, metric, engine).

Nothing else in `downstream/` branches on a task's name or level: a consumer asks the spec (its metric and
direction, whether its examples are utterance means, which engine trains it, what a corpus must hold for it).
Adding a task is one entry in `TASKS` (plus its test). docs/tasks.md describes each task and its sources.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Callable, Literal

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor, nn

from core.frames import FrameRule
from corpora.labels import frame_labels
from corpora.manifest import PROBE_SPLITS, Corpus, Utterance
from corpora.speech_commands import keyword_ids
from corpora.trials import TRIALS_LIST, read_trials
from downstream.metrics import EER, FRAME_ACC, MIN_DCF, PER, UTT_ACC, Metric

# what one prediction is about: a frame, an utterance, or an utterance's label SEQUENCE (no alignment given)
Level = Literal["frame", "utterance", "sequence"]
# which trainer of downstream/ fits the task (downstream.train.ENGINES): stacked classifiers over rows (frames or
# utterance means; the L2 path for the latter), CTC over whole utterances (downstream.ctc), speaker embeddings
# scored on verification trials (downstream.verification)
Engine = Literal["stacked", "ctc", "verification"]


@dataclass(frozen=True)
class LabelSource:
    """Where a task's labels come from.

    `per`: "frame" gives one label per upstream frame (placed by the upstream's frame rule, core.frames),
    "utterance" one label per utterance (broadcast to every valid frame by frame-level tasks), "sequence" one
    label sequence per utterance (its phones in order, no timing).
    `closed_set`: every class must keep a training utterance at every label fraction (speaker ID).
    `require`: raises a ValueError naming the file when a corpus cannot give these labels (before any extraction).
    """

    name: str  # tasks that share a source share its labels (computed once per upstream)
    per: Level
    classes: Callable[[Corpus], list[str]]
    # (corpus, utterances, split name, frame rule) -> one (n_frames,) int64 array per utterance (per="frame"),
    # one (n_utts,) int64 ndarray (per="utterance"), or one (n_labels,) int64 array per utterance (per="sequence")
    make: Callable[[Corpus, list[Utterance], str, FrameRule], "list[np.ndarray] | np.ndarray"]
    closed_set: bool = False
    require: Callable[[Corpus], None] | None = None
    # (corpus, split) -> the utterances a split reads (None: the split's manifest); speaker verification scores
    # trials of held-out speakers' utterances in dev and test
    utterances: Callable[[Corpus, str], list[Utterance]] | None = None

    def split_utterances(self, corpus: Corpus, split: str) -> list[Utterance]:
        return corpus.utterances(split) if self.utterances is None else self.utterances(corpus, split)

    @property
    def field(self) -> str:
        """The field of downstream.data.SplitLabels that holds these labels."""
        return {"frame": "frames", "utterance": "utt", "sequence": "seqs"}[self.per]


def _manifest(corpus: Corpus, split: str) -> str:
    return str(corpus.root / f"{split}.jsonl")


def require_alignments(corpus: Corpus, what: str = "phone labels") -> None:
    """Every utterance of the probe splits carries a phone alignment (transcription with timing)."""
    for split in PROBE_SPLITS:
        utts = corpus.utterances(split)
        if not utts:
            raise ValueError(f"{_manifest(corpus, split)}: the {split} split is missing or empty ({what} need "
                             f"train, dev and test utterances)")
        missing = [u.id for u in utts if not u.alignment]
        if missing:
            raise ValueError(f"{_manifest(corpus, split)}: {len(missing)} of {len(utts)} utterances have no phone "
                             f"transcription ('alignment'), e.g. {missing[0]}: {what} need one for every utterance")


def require_closed_set_speakers(corpus: Corpus) -> None:
    """Every dev and test speaker is one of the train split's speakers (closed-set speaker identification)."""
    if corpus.info.get("closed_set_speakers", True) is False:
        raise ValueError(f"{corpus.root / 'corpus.json'}: its speakers are open-set (closed_set_speakers: false: "
                         f"dev/test speakers are not train speakers, as in TIMIT): a closed-set speaker task cannot "
                         f"score them; use the phone tasks")
    known = set(corpus.speakers)
    for split in PROBE_SPLITS:
        unknown = sorted({u.speaker for u in corpus.utterances(split) if u.speaker not in known})
        if unknown:
            raise ValueError(f"{_manifest(corpus, split)}: speakers not among corpus.json's probe speakers "
                             f"(closed-set speaker ID needs them in train): {unknown[:5]}")


def _phone_labels(corpus: Corpus, utts: list[Utterance], split: str, rule: FrameRule) -> list[np.ndarray]:
    index = {p: i for i, p in enumerate(corpus.phones)}
    return [frame_labels(u, index, rule) for u in utts]


def _speaker_labels(corpus: Corpus, utts: list[Utterance], split: str, rule: FrameRule) -> np.ndarray:
    index = {s: i for i, s in enumerate(corpus.speakers)}
    unknown = sorted({u.speaker for u in utts if u.speaker not in index})
    if unknown:
        raise ValueError(f"corpus {corpus.root}: {split} split has speakers not in corpus.json's probe speakers "
                         f"(closed-set speaker ID needs them in train): {unknown[:5]}")
    return np.array([index[u.speaker] for u in utts], dtype=np.int64)


# Silence is not a phone of SUPERB's PR references: s3prl phonemizes each word transcription with a lexicon
# (downstream/ctc/corpus/libriphone.py), so no SIL token occurs in them. The corpora here mark silence as `sil`
# (TIMIT-39 fold, the built-in corpus) or SIL / sp / spn (Kaldi / MFA style); a corpus whose labels have no names
# (CPC's integer frame labels of LibriSpeech) declares its silence label in corpus.json (info "silence").
SILENCE: frozenset[str] = frozenset({"sil", "SIL", "sp", "spn", "SPN", "h#", "pau", "epi"})


def silence(corpus: Corpus) -> frozenset[str]:
    """The labels that are silence in `corpus`: SILENCE, plus those its preparation declared (corpus.json info
    "silence", e.g. corpora.librispeech.silence_label)."""
    return SILENCE | frozenset(str(p) for p in corpus.info.get("silence", ()))


def phone_classes(corpus: Corpus) -> list[str]:
    """The phone sequence vocabulary: the corpus's phones without silence (index = class id)."""
    sil = silence(corpus)
    return [p for p in corpus.phones if p not in sil]


def phone_sequence(utt: Utterance, index: dict[str, int], sil: frozenset[str] = SILENCE) -> np.ndarray:
    """An utterance's phones in order: one per alignment segment, adjacent segments of the same phone merged (the
    alignment's runs), silence (`sil`) dropped. Phones either side of a silence stay two phones."""
    if not utt.alignment:
        raise ValueError(f"utterance {utt.id} has no phone transcription ('alignment')")
    out: list[int] = []
    prev = None
    for seg in utt.alignment:
        if seg.phone != prev and seg.phone not in sil:
            if seg.phone not in index:
                raise ValueError(f"utterance {utt.id}: phone {seg.phone!r} is not in the phone vocabulary")
            out.append(index[seg.phone])
        prev = seg.phone
    return np.array(out, dtype=np.int64)


def _phone_sequences(corpus: Corpus, utts: list[Utterance], split: str, rule: FrameRule) -> list[np.ndarray]:
    index = {p: i for i, p in enumerate(phone_classes(corpus))}
    sil = silence(corpus)
    try:
        return [phone_sequence(u, index, sil) for u in utts]
    except ValueError as e:
        raise ValueError(f"{_manifest(corpus, split)}: {e}") from None


def _trial_utterances(corpus: Corpus, split: str) -> list[Utterance]:
    return corpus.utterances("train") if split == "train" else read_trials(corpus)[0][split]


def _trial_labels(corpus: Corpus, utts: list[Utterance], split: str, rule: FrameRule) -> dict[str, np.ndarray]:
    """train: the closed-set speaker of every utterance; dev / test: the split's trials as (n_trials, 3) int64 rows
    (position of utterance a in `utts`, of utterance b, 1 when they share a speaker)."""
    if split == "train":
        return {"utt": _speaker_labels(corpus, utts, split, rule)}
    at = {u.id: i for i, u in enumerate(utts)}
    trials = read_trials(corpus)[1][split]
    missing = [t.a for t in trials if t.a not in at] + [t.b for t in trials if t.b not in at]
    if missing:
        raise ValueError(f"{corpus.root / TRIALS_LIST}: trial utterance {missing[0]} is not among the {split} "
                         f"utterances given")
    return {"trials": np.array([[at[t.a], at[t.b], int(t.same)] for t in trials], dtype=np.int64)}


def require_trials(corpus: Corpus) -> None:
    require_closed_set_speakers(corpus)  # the embedding is trained as a classifier of the train speakers
    read_trials(corpus)


def _keyword_labels(corpus: Corpus, utts: list[Utterance], split: str, rule: FrameRule) -> np.ndarray:
    index = keyword_ids(corpus)
    bad = [u.id for u in utts if u.label not in index]
    if bad:
        raise ValueError(f"{_manifest(corpus, split)}: utterance {bad[0]} has no keyword label among corpus.json's "
                         f"keyword_classes")
    return np.array([index[u.label] for u in utts], dtype=np.int64)  # type: ignore[index]


def require_keywords(corpus: Corpus) -> None:
    """corpus.json lists the keyword classes, every probe-split utterance has one of them as its `label`, and every
    class has training utterances (Speech Commands / the built-in keyword corpus: corpora.speech_commands)."""
    index = keyword_ids(corpus)
    for split in PROBE_SPLITS:
        utts = corpus.utterances(split)
        if not utts:
            raise ValueError(f"{_manifest(corpus, split)}: the {split} split is missing or empty (keyword spotting "
                             f"needs train, dev and test utterances)")
        bad = [u.id for u in utts if u.label not in index]
        if bad:
            raise ValueError(f"{_manifest(corpus, split)}: {len(bad)} of {len(utts)} utterances have no keyword label "
                             f"('label', one of corpus.json's keyword_classes), e.g. {bad[0]}")
    missing = sorted(set(index) - {u.label for u in corpus.utterances("train")})
    if missing:
        raise ValueError(f"{_manifest(corpus, 'train')}: no training utterance of keyword class(es) {missing}")


PHONES = LabelSource("phone", "frame", lambda c: list(c.phones), _phone_labels, require=require_alignments)
SPEAKERS = LabelSource("speaker", "utterance", lambda c: list(c.speakers), _speaker_labels, closed_set=True,
                       require=require_closed_set_speakers)
PHONE_SEQUENCES = LabelSource("phone_sequence", "sequence", phone_classes, _phone_sequences,
                              require=lambda c: require_alignments(c, "phone sequences (phone_ctc)"))


KEYWORDS = LabelSource("keyword", "utterance", lambda c: list(keyword_ids(c)), _keyword_labels,
                       require=require_keywords)
SPEAKER_TRIALS = LabelSource("speaker_trials", "utterance", lambda c: list(c.speakers), _trial_labels, closed_set=True,
                             require=require_trials, utterances=_trial_utterances)


def linear_head(in_dim: int, n_classes: int) -> nn.Module:
    """Linear(D, C) starting at zero, as logistic-regression solvers do: the problem is convex, and directions the
    training examples do not span keep a zero weight instead of a random one that would score dev and test."""
    head = nn.Linear(in_dim, n_classes)
    nn.init.zeros_(head.weight)
    nn.init.zeros_(head.bias)
    return head


def one_hidden_head(width: int = 768) -> Callable[[int, int], nn.Module]:
    """Linear(D, width) -> ReLU -> Linear(width, C): the phone probe of the Mockingjay / TERA papers."""
    def make(in_dim: int, n_classes: int) -> nn.Module:
        return nn.Sequential(nn.Linear(in_dim, width), nn.ReLU(), nn.Linear(width, n_classes))
    return make


class XVectorHead(nn.Module):
    """Statistics pooling -> Linear -> embedding; ReLU -> Linear -> speaker logits (the x-vector recipe's segment
    part, Snyder et al. 2018, cut to one embedding layer). Trained as a speaker classifier on the train speakers;
    trials are scored on the embeddings (`embed`)."""

    def __init__(self, in_dim: int, n_classes: int, embed_dim: int = 128) -> None:
        super().__init__()
        self.embedding = nn.Linear(2 * in_dim, embed_dim)
        self.classifier = nn.Linear(embed_dim, n_classes)

    def embed(self, x: Tensor, lengths: Tensor) -> Tensor:
        """Flat frames x (sum of lengths, D), lengths (B,) -> (B, embed_dim): mean and standard deviation over each
        utterance's valid frames, then the affine embedding layer."""
        seg = torch.repeat_interleave(torch.arange(len(lengths), device=x.device), lengths.to(x.device))
        n = lengths.clamp_min(1).to(x.device, x.dtype)[:, None]
        mean = torch.zeros(len(lengths), x.shape[1], dtype=x.dtype, device=x.device).index_add_(0, seg, x) / n
        sq = torch.zeros_like(mean).index_add_(0, seg, x * x) / n
        std = (sq - mean * mean).clamp_min(1e-6).sqrt()
        return self.embedding(torch.cat([mean, std], 1))

    def forward(self, x: Tensor, lengths: Tensor) -> Tensor:
        return self.classifier(torch.relu(self.embed(x, lengths)))


def xvector_head(embed_dim: int = 128) -> Callable[[int, int], nn.Module]:
    def make(in_dim: int, n_classes: int) -> nn.Module:
        return XVectorHead(in_dim, n_classes, embed_dim)
    return make


def cosine_trials(embeddings: Tensor, trials: np.ndarray) -> np.ndarray:
    """Cosine similarity of the two utterances' embeddings of every trial (rows (a, b, same))."""
    e = F.normalize(embeddings.double(), dim=1)
    a, b = torch.from_numpy(trials[:, 0]), torch.from_numpy(trials[:, 1])
    return (e[a] * e[b]).sum(1).numpy()


def cross_entropy(logits: Tensor, targets: Tensor, reduction: str = "none") -> Tensor:
    """(N, C) logits, (N,) class ids -> (N,) losses (the engines weight and average them), or their mean."""
    return F.cross_entropy(logits, targets, reduction=reduction)


def argmax(logits: Tensor) -> Tensor:
    """The index of each row's largest logit (the first, on a tie), as Tensor.argmax(-1) gives it; by torch.max, which
    returns the same indices faster on the CPUs measured (perf/probe_groups.py --decode)."""
    return logits.max(-1).indices


# CTC: the blank is class 0 of the head's outputs, the labels are 1..C (s3prl's ctc expert uses its tokenizer's
# padding id 0 as the blank); zero_infinity as s3prl's libriphone.yaml, for a target longer than its frames.
CTC_BLANK = 0


def ctc_loss(log_probs: Tensor, targets: Tensor, input_lengths: Tensor, target_lengths: Tensor) -> Tensor:
    """(T, B, C + 1) log-probabilities, (B, S) padded targets in 1..C -> (B,) losses, each divided by its target
    length (torch's reduction 'mean', kept per utterance). On the CPU by the scaled float64 kernel
    (downstream.ctcloss: several times faster than torch's there, and closer to the exact values); elsewhere, or where
    that kernel underflows, by torch's."""
    loss = None
    if log_probs.device.type == "cpu" and log_probs.dtype in (torch.float32, torch.float64):
        from downstream.ctcloss import scaled_ctc_loss  # numba, imported only where it runs (the GPU image has none)
        loss = scaled_ctc_loss(log_probs, targets, input_lengths, target_lengths, CTC_BLANK)
    if loss is None:
        loss = F.ctc_loss(log_probs, targets, input_lengths, target_lengths, blank=CTC_BLANK, reduction="none",
                          zero_infinity=True)
    return loss / target_lengths.clamp_min(1).to(loss.dtype)


def ctc_greedy(log_probs: Tensor, lengths: Tensor) -> list[list[int]]:
    """Greedy CTC decoding: the best class of every valid frame, runs merged, blanks dropped; labels 0..C-1.
    log_probs (B, T, C + 1), lengths (B,)."""
    best = log_probs.argmax(-1).cpu()  # (B, T)
    keep = best != CTC_BLANK
    keep[:, 1:] &= best[:, 1:] != best[:, :-1]  # the first frame of each run
    keep &= torch.arange(best.shape[1]) < lengths.cpu()[:, None]
    return [(b[k] - 1).tolist() for b, k in zip(best, keep)]


@dataclass(frozen=True)
class RunCost:
    """What one run of a task is expected to cost, for scheduling only (benchmark.plan.shards.expected_seconds: the
    order probe groups are taken in, and the shards of a sweep): seconds of one frozen probe at label fraction f,
    `fixed + per_fraction * f`, on the last layer of a 4 x 256 upstream on the built-in corpus's 30-ms frames, with
    the main job's settings, its group trained beside another on 2 CPU cores; a weighted sum of 4 hidden states
    costs `weighted_sum` times that. Only the ratios matter."""

    fixed: float
    per_fraction: float
    weighted_sum: float


# Each task's RunCost: the per-run seconds of its groups in the main job (2 fractions x 2 seeds) and the full job (4 x
# 3) from empty folders on an Intel Xeon with AMX, 2 workers, solved for fixed + per_fraction * f and averaged over
# the four 4 x 256 Transformer upstreams (docs/benchmark.md, "The main job and --full"); phone_ctc and
# speaker_verification (one fraction pair in both jobs) split by the steps their probes take at 12.5 % and 100 %;
# phone_ctc's then scaled by what its Transformer groups took with the scaled CTC kernel (downstream.ctcloss) against
# torch's in two such main jobs, per unit of the other tasks' time in each (0.54; 1.7 for the weighted sum's factor).
# A linear frame probe's (phone_linear) is the default of a task that states none.
FRAME_COST = RunCost(0.2, 0.75, 2.5)


@dataclass(frozen=True)
class TaskSpec:
    """A probe: which labels, predicted per frame, per utterance or as a sequence, by which head, trained with which
    loss by which engine, decoded how and scored by which metric (its direction: `metric.direction`).

    `second_metric`: a second test score each row keeps (its `test_utt_metric` column): for a frame-level task with
    utterance labels UTT_ACC, the utterance accuracy of frame logits averaged per utterance (`utt_metric`); for
    speaker verification MIN_DCF, the minimum detection cost of the test trials.
    """

    name: str
    labels: LabelSource
    level: Level  # "utterance": hidden states are mean-pooled over valid frames before the head
    head: Callable[[int, int], nn.Module]  # (input dim, outputs) -> module mapping (n, D) to (n, outputs)
    metric: Metric
    # the head is one Linear layer under a convex loss (cross-entropy): a converged reference exists (certificate);
    # a linear CTC head is not convex in its weights
    linear: bool
    second_metric: Metric | None = None
    description: str = ""
    loss: Callable[..., Tensor] = cross_entropy  # the engine's loss: per example, unreduced
    # outputs -> predictions the metric scores (the stacked engine's logits come in its compute dtype: bfloat16 on
    # bfloat16 hardware)
    decode: Callable[..., object] = argmax
    engine: Engine = "stacked"
    cost: RunCost = FRAME_COST  # the expected cost of one run (scheduling only)

    def __post_init__(self) -> None:
        if not isinstance(self.metric, Metric):
            raise TypeError(f"task {self.name}: metric must be a downstream.metrics.Metric, got {self.metric!r}")
        if self.second_metric is UTT_ACC and (self.level != "frame" or self.labels.per != "utterance"):
            raise ValueError(f"task {self.name}: an utterance score of frame logits (second_metric UTT_ACC) needs "
                             f"frame-level training on utterance labels")
        if self.level == "utterance" and self.labels.per != "utterance":
            raise ValueError(f"task {self.name}: an utterance-level task needs utterance labels")
        if (self.level == "sequence") != (self.labels.per == "sequence"):
            raise ValueError(f"task {self.name}: sequence labels go with the sequence level, and only with it")
        if (self.engine == "ctc") != (self.level == "sequence"):
            raise ValueError(f"task {self.name}: the ctc engine trains sequence-level tasks, and only it does")

    @property
    def pooled(self) -> bool:
        """Whether the examples are utterance means (the mean commutes with the layer choice and the weighted sum:
        downstream.sources.PooledSource) rather than frames."""
        return self.level == "utterance" and self.engine == "stacked"

    @property
    def frame_targets(self) -> bool:
        """Whether every valid frame is an example with its own target (utterance labels broadcast to frames)."""
        return self.level == "frame"

    @property
    def finetunable(self) -> bool:
        """Whether downstream.finetune can train it (a classifier of frames or utterance means)."""
        return self.engine == "stacked"

    def outputs(self, n_classes: int) -> int:
        """The head's output size for `n_classes` labels (CTC adds its blank)."""
        return n_classes + 1 if self.engine == "ctc" else n_classes

    def cache_splits(self, corpus: Corpus) -> dict[str, tuple[str, list[Utterance]]]:
        """Probe split -> (feature-cache split, its utterances) this task reads: the corpus's split manifest, or,
        where the task's split reads other utterances (speaker verification's dev and test: the trial utterances,
        `utterances`), a cache split of its own named after the split and the task's labels ("dev-speaker_trials")."""
        out = {}
        for s in PROBE_SPLITS:
            utts = self.utterances(corpus, s)
            own = [u.id for u in utts] == [u.id for u in corpus.utterances(s)]
            out[s] = (s if own else f"{s}-{self.labels.name}", utts)
        return out

    def utterances(self, corpus: Corpus, split: str) -> list[Utterance]:
        """The utterances whose features split `split` of this task reads, in order."""
        return self.labels.split_utterances(corpus, split)

    @property
    def utt_metric(self) -> bool:
        """Whether the second score is the utterance accuracy of frame logits averaged per utterance."""
        return self.second_metric is UTT_ACC and self.level == "frame"

    def check(self, corpus: Corpus) -> None:
        """ValueError, naming the file, when `corpus` cannot serve this task: call it before any extraction."""
        if self.labels.require is not None:
            try:
                self.labels.require(corpus)
            except ValueError as e:
                raise ValueError(f"task {self.name}: {e}") from None


# The four s3prl legacy probes used by TERA and AALBERT (s3prl legacy downstream tasks; TERA, TASLP 2021): docs/tasks.md.
TASKS: dict[str, TaskSpec] = {
    "phone_linear": TaskSpec("phone_linear", PHONES, "frame", linear_head, FRAME_ACC, linear=True,
                             description="Linear(D, phones) per frame", cost=FRAME_COST),
    "phone_1hidden": TaskSpec("phone_1hidden", PHONES, "frame", one_hidden_head(768), FRAME_ACC, linear=False,
                              description="Linear(D, 768) -> ReLU -> Linear(768, phones) per frame",
                              cost=RunCost(1.9, 5.7, 2.5)),
    "speaker_utterance": TaskSpec("speaker_utterance", SPEAKERS, "utterance", linear_head, UTT_ACC, linear=True,
                                  description="mean over valid frames -> Linear(D, speakers)",
                                  cost=RunCost(0.1, 2.8, 1.6)),
    "speaker_frame": TaskSpec("speaker_frame", SPEAKERS, "frame", linear_head, FRAME_ACC, linear=True,
                              second_metric=UTT_ACC, description="Linear(D, speakers) per frame",
                              cost=RunCost(0.5, 1.6, 2.3)),
}

# SUPERB's tasks (docs/tasks.md). The harness (benchmark/) plans, runs and reports every task of ALL_TASKS; its main
# job's list is benchmark/plan/presets.py::MAIN_TASKS.
SUPERB_TASKS: dict[str, TaskSpec] = {
    "phone_ctc": TaskSpec("phone_ctc", PHONE_SEQUENCES, "sequence", linear_head, PER, linear=False,
                          loss=ctc_loss, decode=ctc_greedy, engine="ctc",
                          description="Linear(D, phones + blank) per frame, CTC, greedy decoding",
                          cost=RunCost(1.1, 11.3, 1.7)),
    "speaker_verification": TaskSpec("speaker_verification", SPEAKER_TRIALS, "utterance", xvector_head(128), EER,
                                     linear=False, decode=cosine_trials, engine="verification",
                                     second_metric=MIN_DCF,
                                     description="mean + std pooling -> Linear(2D, 128) embedding (trained: ReLU -> "
                                                 "Linear(128, speakers)), trials scored by cosine similarity",
                                     cost=RunCost(0.3, 2.8, 3.5)),
    "keywords": TaskSpec("keywords", KEYWORDS, "utterance", linear_head, UTT_ACC, linear=True,
                         description="mean over valid frames -> Linear(D, 12 keyword classes)",
                         cost=RunCost(0.2, 0.85, 1.9)),
}
ALL_TASKS: dict[str, TaskSpec] = {**TASKS, **SUPERB_TASKS}


def get_task(name: str) -> TaskSpec:
    if name not in ALL_TASKS:
        raise ValueError(f"unknown task {name!r}; valid: {', '.join(ALL_TASKS)}")
    return ALL_TASKS[name]
