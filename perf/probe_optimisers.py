"""Which trainer reaches the converged regression: the former main-job probes (AdamW, trained to convergence, as
the main job ran them before it moved to SGD and L2 paths) against the main job's (SGD on whitened frames; an L2
path on standardised utterance means) and the certificate's reference, on one cache.

For each task, fraction and seed: phone_linear (last layer) trained with the former main-job AdamW (dev at least 50
steps apart), AdamW scored every step, and the main job's SGD; speaker_utterance (last layer) with the former
main-job AdamW on whitened means and the main job's L-BFGS path on standardised means. Each beside the certificate's
reference on the same examples: benchmark.report.convergence's torch L-BFGS for frames, scikit-learn's
LogisticRegression for utterance means (an independent solver; slow on 256-d Transformer means, quick on 80-d mel).
Run the main job (or any run that builds the cache) first.

    .venv/bin/python perf/probe_optimisers.py --upstream mockingjay --tasks phone_linear --out results/probe_optimisers.csv
    .venv/bin/python perf/probe_optimisers.py --upstream mel --tasks speaker_utterance --out results/probe_optimisers_speaker.csv
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

import pandas as pd
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from benchmark.plan.presets import FRAME_PROBE, MAIN_TASK_PROBES  # noqa: E402
from benchmark.plan.runs import parse_fractions  # noqa: E402
from benchmark.report.convergence import (  # noqa: E402
    CACHED_UPSTREAM_HELP, Certifier, Reference, UTT_L2_GRID, cached_identity, fit_reference)
from core.io import atomic_write_text  # noqa: E402
from corpora.manifest import PROBE_SPLITS, load_corpus  # noqa: E402
from downstream.data import Targets, flat_rows  # noqa: E402
from downstream.fractions import fraction_subset  # noqa: E402
from downstream.heads import Whitening  # noqa: E402
from downstream.modes import LayerMode  # noqa: E402
from downstream.tasks import TASKS  # noqa: E402
from downstream.config import AdamW, Minibatch, ProbeConfig  # noqa: E402
from downstream.train import train_probe  # noqa: E402

# The former main-job frame probe: AdamW, dev scored at least 50 steps apart.
ADAMW_FRAME = ProbeConfig(Minibatch(AdamW(lr=1e-2), batch_size=4096, min_eval_steps=50), patience=4)
TRAINERS = {
    "phone_linear": {"AdamW, dev >= 50 steps apart (former main-job trainer)": (ADAMW_FRAME, "whiten"),
                     "AdamW, dev every step": (ADAMW_FRAME.with_fields(min_eval_steps=1), "whiten"),
                     "SGD, dev every epoch (main job)": (FRAME_PROBE, "whiten")},
    "speaker_utterance": {"AdamW on whitened means (former main-job trainer)": (ProbeConfig(
                              Minibatch(AdamW(lr=1e-2), batch_size=32), patience=10), "whiten"),
                          "L2 path on standardised means (main job)": (MAIN_TASK_PROBES["speaker_utterance"],
                                                                       "standardise")},
}


def fit_sklearn_reference(train: tuple[torch.Tensor, torch.Tensor], dev: tuple[torch.Tensor, torch.Tensor],
                          test: tuple[torch.Tensor, torch.Tensor], grid: tuple[float, ...] = UTT_L2_GRID,
                          tol: float = 1e-6, max_iter: int = 5000) -> Reference:
    """scikit-learn's multinomial LogisticRegression (lbfgs) per L2 strength, C = 1 / (l2 * n_train) (the same
    objective as `fit_reference`: mean cross-entropy + l2 / 2 * |W|^2); keep the best on dev."""
    import warnings

    from sklearn.exceptions import ConvergenceWarning
    from sklearn.linear_model import LogisticRegression

    x, y = train[0].numpy(), train[1].numpy()
    best: Reference | None = None
    for l2 in sorted(grid, reverse=True):
        model = LogisticRegression(C=1.0 / (l2 * len(y)), tol=tol, max_iter=max_iter)
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always", ConvergenceWarning)
            model.fit(x, y)
        ok = not any(issubclass(w.category, ConvergenceWarning) for w in caught)
        d = float(model.score(dev[0].numpy(), dev[1].numpy()))
        if best is None or d > best.dev:
            best = Reference(l2, d, float(model.score(test[0].numpy(), test[1].numpy())), int(model.n_iter_.max()), ok)
    assert best is not None
    return best


def _data(cert: Certifier, pooled, frames, task, idx: list[int]):
    """(train, dev, test) example/target pairs of the last hidden state, training subset `idx`."""
    src = pooled if task.pooled else frames
    out = []
    for s in PROBE_SPLITS:
        x = src.examples(s)[src.position(src.num_hidden_states - 1)]
        t = Targets(task, cert.labels(task, s), src.lengths(s), s)
        y = torch.from_numpy(t.rows)
        if s == "train":
            sel = torch.from_numpy(flat_rows(frames.splits[s].offsets, idx)) if task.frame_targets else torch.tensor(idx)
            x, y = x.index_select(0, sel), y.index_select(0, sel)
        out.append((x, y))
    return out


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--corpus", default="data/synth")
    p.add_argument("--cache-dir", type=Path, default=Path("cache/features"))
    p.add_argument("--upstream", default="mockingjay", help=CACHED_UPSTREAM_HELP)
    p.add_argument("--tasks", default="phone_linear,speaker_utterance")
    p.add_argument("--fractions", default="0.01,1")
    p.add_argument("--seeds", default="0,1,2")
    p.add_argument("--out", type=Path, help="also write the CSV here (default: print the summary only)")
    a = p.parse_args()
    torch.set_num_threads(1)
    corpus = load_corpus(a.corpus)
    try:
        fractions = parse_fractions(a.fractions)
        row = cached_identity(a.cache_dir, a.upstream, corpus)
        cert = Certifier(corpus, a.cache_dir)
        frames, pooled = cert.sources(row)
    except (FileNotFoundError, ValueError) as e:  # a bad --fractions, no cache entry for a split, an unknown upstream
        print(f"error: {e}", file=sys.stderr)
        return 2
    standardised = pooled.whitening()
    whitened = [Whitening(pooled.hidden_size).fit(x) for x in pooled.means("train")]
    speakers = [u.speaker for u in cert.utts["train"]]
    rows = []
    for task_name in a.tasks.split(","):
        task = TASKS[task_name]
        labels = {s: cert.labels(task, s) for s in PROBE_SPLITS}
        n_cls = len(task.labels.classes(corpus))
        refs = {}
        for frac in fractions:
            for seed in (int(s) for s in a.seeds.split(",")):
                idx = list(fraction_subset(speakers, frac, seed, task.labels.closed_set).indices)
                for name, (cfg, norm) in TRAINERS[task_name].items():
                    if task.pooled:  # the same means, normalised as this trainer's row says
                        pooled._transforms, pooled._examples = (whitened if norm == "whiten" else standardised), {}
                    src = pooled if task.pooled else frames
                    r = train_probe(task, LayerMode("last"), src, labels, idx, n_cls, cfg, seed)
                    if (frac, seed, norm) not in refs:  # one reference per set of examples
                        data = _data(cert, pooled, frames, task, idx)
                        refs[frac, seed, norm] = (fit_sklearn_reference(*data) if task.pooled
                                                  else fit_reference(*data, n_cls))
                    ref = refs[frac, seed, norm]
                    rows.append({"upstream": f"{row['upstream']}:{row['preset']}", "task": task_name, "fraction": frac,
                                 "seed": seed, "trainer": name, "examples": norm, "steps": r.steps, "best_step": r.best_step,
                                 "wall_seconds": round(r.wall_seconds, 1), "dev": round(100 * r.dev_metric, 2),
                                 "test": round(100 * r.test_metric, 2), "reference_dev": round(100 * ref.dev, 2),
                                 "reference_test": round(100 * ref.test, 2), "reference_l2": ref.l2})
                    print(rows[-1], flush=True)
    table = pd.DataFrame(rows)
    if a.out is not None:
        atomic_write_text(a.out, table.to_csv(index=False))
    summary = table.groupby(["task", "fraction", "trainer"], sort=False)[["test", "reference_test", "wall_seconds"]].mean()
    print(summary.round(2).to_string())
    if a.out is not None:
        print(f"wrote {a.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
