"""The result row: one flat record per probe run (results/runs.csv), the values an older runs.csv's rows are read
with, and the command.txt beside the rows. Tables and plots are functions of rows."""
from __future__ import annotations

from typing import Any, Callable, Iterable, Mapping

RUN_COLUMNS: tuple[str, ...] = (
    "run_id",  # stable hash of the run's defining fields (upstream, ckpt_hash, corpus, task, mode, layer, fraction, seed, probe config)
    "corpus",
    "upstream",  # mel, mockingjay, aalbert, mockingjay_random, aalbert_random
    "preset",
    "ckpt_hash",  # first 16 hex of the model weights' SHA-256 (or of the config for mel / random-init)
    "params",  # upstream parameter count
    "pretrain_frames",  # frames seen in pretraining (0 for mel / random)
    "pretrain_seconds",  # pretraining wall time (0 for mel / random)
    "pretrain_recipe",  # the pretraining recipe recorded in the checkpoint (pretrain.config.RECIPES); "-" for mel / random
    "task",  # phone_linear, phone_1hidden, speaker_utterance, speaker_frame
    "mode",  # last, layer, weighted_sum, finetune
    "layer",  # hidden-state index used (-1 for weighted_sum)
    "fraction",  # fraction of the labelled train split (0 < f <= 1)
    "train_utts",
    "train_frames",
    "seed",
    "metric",  # name of the metric in dev_metric/test_metric (frame_acc, utt_acc)
    "dev_metric",
    "test_metric",
    "test_utt_metric",  # the task's second_metric: speaker_frame's utterance accuracy of frame logits, minDCF; else empty
    "best_step",  # the training step whose dev score was best (test is evaluated there)
    "steps",  # training steps run
    "budget",  # the stopping rule: "converge" (early stopping on dev) or "steps=N" (a fixed, approximate budget)
    "converged",  # True when the run stopped because dev stopped improving; False at the step cap or a fixed budget
    "wall_seconds",
    "layer_weights",  # weighted_sum: softmax weights joined by ';' (hidden state 0 first); else empty
    "device",
    "toolkit_version",
    "git_commit",
    "date",
)
# what makes two runs the same configuration up to the seed: the checkpoint (two checkpoints of one upstream,
# e.g. snapshots of a pretraining run) and the probe's budget rule are part of it, so rows of different
# checkpoints or budgets in one runs.csv are never merged (or silently dropped as duplicates) by aggregation
LEADERBOARD_KEYS: tuple[str, ...] = ("corpus", "upstream", "preset", "ckpt_hash", "task", "mode", "layer", "fraction",
                                     "budget")
# columns added since the first release: rows written before them are read with these values (budget
# "steps=<steps>": every run then had a fixed step budget; the recipe was not recorded)
ADDED_COLUMNS: tuple[str, ...] = ("budget", "converged", "pretrain_recipe")
LEGACY_RECIPE = "unrecorded"


# THE upgrade of an older runs.csv (benchmark.record.results.read_rows applies it to csv rows,
# benchmark.record.aggregate.upgrade_legacy to a DataFrame's): values of the columns added since the first release, for
# rows written before them. Every run then had a fixed step budget, and the pretraining recipe was not recorded.
LEGACY_VALUES: dict[str, Callable[[Mapping[str, Any]], Any]] = {
    "budget": lambda r: f"steps={int(float(r['steps'] or 0))}", "converged": lambda r: "False",
    "pretrain_recipe": lambda r: LEGACY_RECIPE}


def legacy_missing(header: Iterable[str]) -> list[str] | None:
    """The added columns an older header lacks ([] for the current header), or None for a foreign header."""
    header = tuple(header)
    missing = [c for c in RUN_COLUMNS if c not in header]
    if set(missing) - set(ADDED_COLUMNS) or header != tuple(c for c in RUN_COLUMNS if c in header):
        return None
    return missing


# beside runs.csv (and a study's outputs): the command lines that produced them, which the report cites
COMMAND_FILE = "command.txt"
