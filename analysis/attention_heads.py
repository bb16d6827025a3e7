"""Head types after Yang et al. 2020 (arXiv 2006.03265): diagonal, vertical or global, and what the global heads carry.

    python -m analysis.attention_heads --ckpt mockingjay=checkpoints/mockingjay-small \\
        --ckpt aalbert=checkpoints/aalbert-small --corpus data/synth --out results/attention/heads

1. Statistics per head over `--n` utterances of the corpus's test split (analysis.attention_stats), averaged over
   utterances, then each head classified by the first rule that holds (thresholds ours; the paper names the types):
     global    entropy >= 0.9 x log n         (near-uniform: attention spread over the whole utterance)
     diagonal  local_share >= 0.5             (half the mass within +-50 ms of the query)
     vertical  vertical_share >= 0.5          (half of the query-averaged mass on 5 % of the keys)
     mixed     none of these
   Writes OUT/head_classes.csv (one row per model, layer, head), OUT/head_mix.md and OUT/head_mix.png.
2. With `--ablate MODEL,...`: the global heads of those models are removed at inference (their attention output
   zeroed, as head masking in Michel et al. 2019), and, as a control, the same number of non-global heads drawn at
   random (seeded). Each variant is a derived checkpoint under RUNS (shared layers unrolled into equal copies, so a
   head can be removed at one depth only; the unrolled model computes the same function) probed by the benchmark
   harness at 100 % of the labels beside the intact model (OUT/ablation/runs.csv, OUT/ablation.md).
"""
from __future__ import annotations

import argparse
import shlex
import sys
import time
from dataclasses import replace
from pathlib import Path

import numpy as np
import pandas as pd

from analysis.attention import attention_of, corpus_utterances, load_models, local_frames_of
from analysis.attention_stats import stats_rows
from core.figures import plt, save_figure
from benchmark.plan.presets import main_job
from benchmark.record.aggregate import aggregate_runs, read_runs
from benchmark.report.tables import to_markdown
from benchmark.run.runner import run_benchmark
from core.io import atomic_write_text
from upstream.checkpoint import META_FILE, checkpoint_hash, load_checkpoint, save_checkpoint

GLOBAL_ENTROPY, LOCAL_SHARE, VERTICAL_SHARE = 0.9, 0.5, 0.5
HEAD_TYPES = ("diagonal", "vertical", "global", "mixed")
TYPE_COLORS = {"diagonal": "#1f77b4", "vertical": "#ff7f0e", "global": "#2ca02c", "mixed": "#bbbbbb"}


def classify(per_head: pd.DataFrame) -> pd.DataFrame:
    """Per (model, layer, head): statistics averaged over utterances and the head type."""
    cols = ["entropy_nats", "uniform_entropy_nats", "local_share", "vertical_share", "mean_distance_frames"]
    heads = per_head.groupby(["model", "layer", "head"], sort=False)[cols].mean().reset_index()
    heads["entropy_ratio"] = heads["entropy_nats"] / heads["uniform_entropy_nats"]
    heads["type"] = np.select(
        [heads["entropy_ratio"] >= GLOBAL_ENTROPY, heads["local_share"] >= LOCAL_SHARE,
         heads["vertical_share"] >= VERTICAL_SHARE], ["global", "diagonal", "vertical"], "mixed")
    return heads


def head_mix(heads: pd.DataFrame) -> pd.DataFrame:
    """Counts of each head type per model (all layers) and per model and layer."""
    per_layer = heads.groupby(["model", "layer", "type"]).size().unstack(fill_value=0)
    total = heads.groupby(["model", "type"]).size().unstack(fill_value=0)
    total.insert(0, "layer", "all")
    per_layer = per_layer.reset_index(level="layer")
    mix = pd.concat([total, per_layer]).reset_index()
    for t in HEAD_TYPES:
        if t not in mix:
            mix[t] = 0
    return mix[["model", "layer", *HEAD_TYPES]]


def plot_mix(heads: pd.DataFrame, path: Path) -> Path:
    models = list(dict.fromkeys(heads["model"]))
    fig, axes = plt.subplots(1, len(models), figsize=(3.2 * len(models) + 1, 3.6), squeeze=False, sharey=True)
    for ax, model in zip(axes[0], models):
        h = heads[heads["model"] == model]
        layers = sorted(h["layer"].unique())
        bottom = np.zeros(len(layers))
        for t in HEAD_TYPES:
            n = np.array([(h[(h["layer"] == layer)]["type"] == t).sum() for layer in layers])
            ax.bar([str(layer) for layer in layers], n, bottom=bottom, color=TYPE_COLORS[t], label=t)
            bottom += n
        ax.set(title=model, xlabel="layer", ylabel="heads")
    axes[0][-1].legend(fontsize=7, loc="upper right")
    fig.suptitle("Attention head types (Yang et al. 2020's categories; thresholds in analysis/attention_heads.py)")
    return save_figure(fig, path)


def ablated_checkpoint(src: Path, heads: list[tuple[int, int]], out: Path, note: str) -> Path:
    """A copy of checkpoint `src` whose listed (layer from 1, head) pairs contribute nothing: the columns of that
    layer's attention output projection that read the head are zeroed. Shared layers are unrolled first."""
    if (out / META_FILE).is_file():
        return out
    meta, groups = load_checkpoint(src)
    tensors = dict(groups["model"])
    enc = meta["encoder"]
    n_layers, n_heads, hidden = enc["num_layers"], enc["num_heads"], enc["hidden_size"]
    if enc["share_layers"]:  # layer 0's weights at every depth, as separate (equal) copies
        shared = {k: v for k, v in tensors.items() if k.startswith("encoder.layers.0.")}
        for i in range(1, n_layers):
            tensors.update({k.replace("encoder.layers.0.", f"encoder.layers.{i}.", 1): v.clone()
                            for k, v in shared.items()})
        enc = {**enc, "share_layers": False}
    d = hidden // n_heads
    for layer, head in heads:
        if not (1 <= layer <= n_layers and 0 <= head < n_heads):
            raise ValueError(f"head ({layer}, {head}) is not in a {n_layers}-layer, {n_heads}-head model")
        w = tensors[f"encoder.layers.{layer - 1}.attn_out.weight"].clone()
        w[:, head * d:(head + 1) * d] = 0
        tensors[f"encoder.layers.{layer - 1}.attn_out.weight"] = w
    keep = {k: v for k, v in meta.items() if k not in ("files", "format_version", "train_state")}
    return save_checkpoint(out, {"model": tensors}, {**keep, "encoder": enc, "complete": True,
                                                   "ablation": {"source": str(src), "removed_heads": heads,
                                                                "note": note}})


def ablation_sets(heads: pd.DataFrame, model: str, seed: int) -> dict[str, list[tuple[int, int]]]:
    """The model's global heads, and as many non-global heads drawn at random (seeded)."""
    h = heads[heads["model"] == model]
    glob = [(int(r.layer), int(r.head)) for r in h.itertuples() if r.type == "global"]
    others = [(int(r.layer), int(r.head)) for r in h.itertuples() if r.type != "global"]
    rng = np.random.default_rng(seed)
    pick = sorted(rng.choice(len(others), size=min(len(glob), len(others)), replace=False).tolist())
    return {"no_global": glob, "no_random": [others[i] for i in pick]}


def run_ablation(ckpts: dict[str, str], heads: pd.DataFrame, corpus: str, out: Path, runs: Path, seeds: int,
                 tasks: tuple[str, ...]) -> pd.DataFrame:
    base = replace(main_job(), corpus=corpus, tasks=tasks, fractions=(1.0,), seeds=seeds, finetune_ends=False,
                   results_dir=out / "ablation", report=False, modes="last,weighted_sum")
    labels: dict[str, str] = {}
    for model, path in ckpts.items():
        variants = {"intact": Path(path)}
        for name, removed in ablation_sets(heads, model, seed=0).items():
            if removed:
                variants[name] = ablated_checkpoint(Path(path), removed, runs / f"{model}-{name}",
                                                    f"{name}: {len(removed)} heads removed")
        for name, ckpt in variants.items():
            run_benchmark(replace(base, upstreams=(model,), ckpts={model: str(ckpt)}))
            labels[checkpoint_hash(ckpt)[:16]] = name
    agg = aggregate_runs(read_runs(out / "ablation" / "runs.csv"))
    agg["variant"] = agg["ckpt_hash"].map(labels)
    return agg[agg["variant"].notna()]


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--ckpt", action="append", default=[], help="NAME=CKPT_DIR, repeatable")
    p.add_argument("--upstream", action="append", default=[], help="checkpoint-free spec, e.g. mockingjay_random")
    p.add_argument("--corpus", type=Path, default=Path("data/synth"))
    p.add_argument("--n", type=int, default=20, help="test utterances for the statistics")
    p.add_argument("--ablate", default="", help="comma list of --ckpt NAMEs whose global heads are removed and re-probed")
    p.add_argument("--tasks", default="phone_linear,speaker_utterance")
    p.add_argument("--seeds", type=int, default=3)
    p.add_argument("--runs-dir", type=Path, default=Path("runs/head_ablation"))
    p.add_argument("--out", type=Path, default=Path("results/attention/heads"))
    a = p.parse_args(argv)
    t0 = time.perf_counter()
    try:
        ckpts = dict(c.split("=", 1) for c in a.ckpt if "=" in c)
        ablate = [m for m in a.ablate.split(",") if m]
        if bad := [m for m in ablate if m not in ckpts]:
            raise ValueError(f"--ablate {bad}: not a --ckpt NAME (given: {', '.join(ckpts) or 'none'})")
        utts = corpus_utterances(a.corpus, "test", a.n, 0, 16_000, 15.0)
        models = load_models(a.ckpt, a.upstream, [w for _, w in utts])
    except (FileNotFoundError, ValueError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    per_head = per_head_stats(models, utts)
    heads = classify(per_head)
    a.out.mkdir(parents=True, exist_ok=True)
    atomic_write_text(a.out / "head_classes.csv", heads.to_csv(index=False))
    mix = head_mix(heads)
    command = "python -m analysis.attention_heads " + shlex.join(sys.argv[1:] if argv is None else argv)
    text = ("# Attention head types\n\n" + to_markdown(mix) +
            f"\nHead counts per type (rules in analysis/attention_heads.py). `{command}`\n")
    plot_mix(heads, a.out / "head_mix.png")
    if ablate:
        agg = run_ablation({m: ckpts[m] for m in ablate}, heads, str(a.corpus), a.out, a.runs_dir, a.seeds,
                           tuple(a.tasks.split(",")))
        show = pd.DataFrame({"model": agg["upstream"], "variant": agg["variant"], "task": agg["task"],
                             "mode": agg["mode"],
                             "test (%)": [f"{m * 100:.1f} ± {c * 100:.1f}" for m, c in
                                          zip(agg["test_mean"], agg["test_ci95"].fillna(0))],
                             "seeds": agg["n_seeds"]}).sort_values(["model", "task", "mode", "variant"])
        table = to_markdown(show)
        atomic_write_text(a.out / "ablation.md", table + f"\n100 % of the labels, mean ± 95 % CI. `{command}`\n")
        text += "\n## Removing heads at inference\n\n" + table
    atomic_write_text(a.out / "head_mix.md", text)
    atomic_write_text(a.out / "command.txt", f"{command}\n# {time.perf_counter() - t0:.0f} s\n")
    print(text)
    return 0


def per_head_stats(models, utts) -> pd.DataFrame:
    """Per (model, utterance, layer, head) statistics, as analysis.attention computes them."""
    rows = []
    for name, model in models.items():
        frame_ms = 1000 * model.frame_shift / model.sample_rate
        for utt, wav in utts:
            w, lengths = attention_of(model, wav)
            rows += stats_rows(name, [utt], w, lengths, local_frames_of(frame_ms))
    return pd.DataFrame(rows)


if __name__ == "__main__":
    sys.exit(main())
