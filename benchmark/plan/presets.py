"""The packaged jobs: the default benchmark (target: every task within 10 min on 2 CPU cores from empty folders, the
four probes within 5), `--full` (every default fraction and 3 seeds: the rows results/ ships) and `--quick` (<= 5 min).

Every frozen probe trains until dev stops improving (downstream.train): the budget is set by the data, not
by the clock. The per-task settings below only change how fast a probe gets there (measured on the built-in
corpus, docs/benchmark.md): frame-level probes take large minibatches of standardised frames, the mean-pooled
speaker probe (1,200 examples at 100 % of the labels) small ones.
"""
from __future__ import annotations

from dataclasses import replace

from benchmark.plan.config import BenchmarkConfig
from downstream.config import AdamW, FinetuneAdamW, L2Path, Minibatch, NaturalSGD, ProbeConfig
from downstream.tasks import TASKS

# the frame-level linear probes (phone_linear, speaker_frame): natural-gradient SGD. With SGD at lr 0.5 speaker_frame
# stopped 2-4 points below the solved regression at 100 % on every Transformer upstream (the certificate's margin is
# 1); no SGD step size passed every upstream, the near-chance 10-ms mel wanting a small one and the pretrained
# features a large one. NaturalSGD at lr 0.01 passed all four tried, 3 seeds each, at the same patience and a
# similar step count, and phone_linear scored as with SGD (docs/benchmark.md, results/probe_settings_*_ngd_*.json)
FRAME_PROBE = ProbeConfig(Minibatch(NaturalSGD(lr=0.01), batch_size=4096, min_eval_steps=1), patience=4)
# SUPERB's tasks train on whole utterances, the probes of a sweep as one group (downstream.utterances):
# phone_ctc as s3prl's libriphone.yaml (Adam, lr 1e-2, 16 utterances a batch), speaker_verification's x-vector head
# with AdamW at 1e-3 on 32 utterances; dev after every pass over the training subset but at least 20 steps apart
# (a dev pass decodes or embeds the whole dev split: at 12.5 % of the labels an epoch is 10 steps), the stopping rule
# of every probe
# patience 6: with 3 the CTC heads stopped while still improving (10-ms mel at 100 %: test PER 60.1 against 52.9,
# mockingjay's last layer 33.0 against 26.1, at 2.5-3.5x the steps; results/probe_settings_phone_ctc_*.json)
CTC_PROBE = ProbeConfig(Minibatch(AdamW(lr=1e-2), batch_size=16, min_eval_steps=20), patience=6)
# the same for verification: mockingjay's weighted sum at 100 % reached dev EER 30.8 (test 27.5) with patience 6 or 10
# against 32.5 (30.8) with 3 (results/probe_settings_speaker_verification.json)
VERIFICATION_PROBE = ProbeConfig(Minibatch(AdamW(lr=1e-3), batch_size=32, min_eval_steps=20), patience=6)
# the MLP head: AdamW at 4e-3 with dev at least 20 steps apart, against 1e-3 and 50 steps: the same sweep (4 fractions x
# 3 seeds) in 58 % of the steps on the reference Mockingjay (52.0 against 70.5 s, 2 threads) and 58 % on AALBERT; the
# 100 % probes reach dev within 0.15 points (81.05 / 81.44 against 81.20 / 81.42) in 30 % fewer steps; the 1-5 % probes
# (full batches of a few thousand frames) peak within ~100 steps at this rate and stop 80 steps later, 0.26-0.42 dev
# points below the slower rate's peak (a tenth of the 95 % CI over their seeds): a small price, stated in
# docs/benchmark.md (results/probe_settings_phone_1hidden_*.json)
MAIN_TASK_PROBES = {
    "phone_1hidden": ProbeConfig(Minibatch(AdamW(lr=4e-3), batch_size=2048, min_eval_steps=20), patience=4),
    "speaker_utterance": ProbeConfig(L2Path(), patience=3),
    # keyword spotting's linear head on clip means, as speaker_utterance's: the L2 path (on the built-in keyword
    # corpus, mean log-mel: test accuracy 0.86 against 0.68 for AdamW, docs/tasks.md)
    "keywords": ProbeConfig(L2Path(), patience=3),
    "phone_ctc": CTC_PROBE,
    "speaker_verification": VERIFICATION_PROBE,
}
# The full job (and the main job at its fraction ends and seeds) runs the four probes of the Mockingjay / AALBERT
# papers for every upstream, fraction and seed.
# phone_1hidden (an MLP head: its 768-wide hidden layer is most of the job's probe compute, in bfloat16 where the
# hardware multiplies it natively, core.repro.fast_bfloat16) reads the last layer only: it is already 60 %
# of the job's probe time there (docs/benchmark.md), a weighted sum mixes four hidden states per row on top, and the
# linear probes already ask the weighted-sum question. `--mode` runs it on any mode. speaker_frame takes the frame
# rule.
# Then SUPERB's phoneme recognition (phone_ctc, PER) and speaker verification (speaker_verification, EER) on last
# layer and weighted sum, at 12.5 % and 100 % of the labels and one seed (MAIN_TASK_FRACTIONS, MAIN_TASK_SEEDS): at
# 5 % (60 utterances; 100 for verification, one per speaker) both were near chance for every upstream (PER 0.93-1.24,
# EER 0.43-0.51), a point that tells the upstreams apart by noise only; and phone_ctc is already the costliest task
# of the main job (docs/benchmark.md, "The main job and --full").
# And SUPERB's keyword spotting (keywords, accuracy) on the built-in keyword corpus (corpora/synth/keywords.py: the
# speech corpus has no keyword labels), built on demand beside it, at the fractions it is large enough for (the main
# job: the smallest and the largest) x the plan's seeds.
MAIN_TASKS = (*TASKS, "phone_ctc", "speaker_verification", "keywords")
MAIN_TASK_CORPORA = {"keywords": "synth_keywords"}
MAIN_TASK_MODES = {"phone_1hidden": "last"}
MAIN_TASK_FRACTIONS: dict[str, tuple[float, ...]] = {"phone_ctc": (0.125, 1.0), "speaker_verification": (0.125, 1.0)}
MAIN_TASK_SEEDS: dict[str, int] = {"phone_ctc": 1, "speaker_verification": 1}
# fine-tuning starts from the converged frozen last-layer probe and moves the upstream gently; dev is
# evaluated live (the upstream over all of dev) every 25 steps, so patience counts fewer, costlier evaluations
MAIN_FINETUNE = ProbeConfig(Minibatch(FinetuneAdamW(lr=1e-3, upstream_lr=5e-5), batch_size=8, eval_every=40),
                            patience=2, max_steps=400)
QUICK_FINETUNE = MAIN_FINETUNE.with_fields(eval_every=4, max_steps=12)
# --quick is a smoke test of the pipeline (<= 5 min from empty folders): the same stopping rule, with the
# frame-level probes capped at 150 steps (a capped run is recorded converged=False and marked in the report)
QUICK_PROBE = replace(FRAME_PROBE, max_steps=150)
QUICK_TASK_PROBES = {**MAIN_TASK_PROBES, "phone_1hidden": replace(MAIN_TASK_PROBES["phone_1hidden"], max_steps=150),
                     "phone_ctc": replace(CTC_PROBE, max_steps=150),
                     "speaker_verification": replace(VERIFICATION_PROBE, max_steps=150)}
# the whole-utterance tasks once each, at 100 % of the labels
QUICK_TASK_FRACTIONS: dict[str, tuple[float, ...]] = {"phone_ctc": (1.0,), "speaker_verification": (1.0,)}
QUICK_TASK_SEEDS: dict[str, int] = {"phone_ctc": 1, "speaker_verification": 1}


def full_job() -> BenchmarkConfig:
    """`--full`: the four probe tasks x {last, weighted_sum} (phone_1hidden: last) x every default fraction x 3 seeds x 6
    upstreams, phone_ctc and speaker_verification x {last, weighted_sum} at MAIN_TASK_FRACTIONS x MAIN_TASK_SEEDS,
    keywords on the built-in keyword corpus x {last, weighted_sum} x its fractions x 3 seeds, plus fine-tuning of
    Mockingjay and AALBERT (phone_linear) at the largest fraction, 1 seed: the rows results/ ships."""
    return BenchmarkConfig(tasks=MAIN_TASKS, task_corpora=MAIN_TASK_CORPORA, task_modes=MAIN_TASK_MODES, probe=FRAME_PROBE,
                           task_probes=MAIN_TASK_PROBES,
                           task_fractions=MAIN_TASK_FRACTIONS, task_seeds=MAIN_TASK_SEEDS,
                           finetune_probe=MAIN_FINETUNE, seeds=3, finetune_seeds=1, finetune_smallest=False,
                           report=True)


# The main job (no flags): the full job's tasks, upstreams, modes and settings at the two ends of the data-size
# ablation (the smallest and the largest default fraction) x MAIN_SEEDS seeds, without fine-tuning, so that every task
# fits 10 min and the four probes 5 min on 2 CPU cores from empty folders (docs/benchmark.md, "The main job and
# --full"). Its runs are a subset of the full job's, with the same run ids: results/ (the full job's rows) holds them.
MAIN_SEEDS = 2


def main_job() -> BenchmarkConfig:
    """The default benchmark: `full_job` at the smallest and largest default fraction x MAIN_SEEDS seeds (keywords the
    same on its corpus; phone_ctc and speaker_verification as in the full job), no fine-tuning (`--mode finetune`
    or `--full` runs it)."""
    return replace(full_job(), seeds=MAIN_SEEDS, fraction_ends=True, finetune_ends=False)


def quick_job() -> BenchmarkConfig:
    """The smoke version the tests run: same pipeline and stopping rule on the small corpus (data/synth_quick; keywords
    on the built-in keyword corpus, small already), two fractions (12.5 % and 100 %), two seeds, frame probes capped at 150 steps, a short fine-tuning cap."""
    return BenchmarkConfig(tasks=MAIN_TASKS, task_corpora=MAIN_TASK_CORPORA, task_modes=MAIN_TASK_MODES, probe=QUICK_PROBE,
                           task_probes=QUICK_TASK_PROBES,
                           task_fractions=QUICK_TASK_FRACTIONS, task_seeds=QUICK_TASK_SEEDS,
                           finetune_probe=QUICK_FINETUNE, fractions=(0.125, 1.0), seeds=2, finetune_seeds=1, quick=True,
                           report=True)
