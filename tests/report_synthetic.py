"""Synthetic result rows shaped like a real benchmark run (for report tests and for looking at the figures)."""
from __future__ import annotations

import numpy as np
import pandas as pd

from benchmark.record.schema import RUN_COLUMNS

# (params, hidden states, ceiling per task kind, pretrained?) -- invented numbers with the papers' shapes.
_UPSTREAMS = {"mel": (0, 1, 0.55, False), "mockingjay": (4_000_000, 4, 0.75, True),
              "aalbert": (1_500_000, 4, 0.73, True), "mockingjay_random": (4_000_000, 4, 0.50, False),
              "aalbert_random": (1_500_000, 4, 0.49, False)}
TASKS = {"phone_linear": "frame_acc", "phone_1hidden": "frame_acc", "speaker_utterance": "utt_acc",
         "speaker_frame": "frame_acc"}
FRACTIONS = (0.01, 0.03, 0.1, 0.3, 0.5, 1.0)


def synthetic_runs(upstreams: tuple[str, ...] = tuple(_UPSTREAMS), tasks: tuple[str, ...] = tuple(TASKS),
                   fractions: tuple[float, ...] = FRACTIONS, seeds: tuple[int, ...] = (0, 1, 2),
                   full_train_utts: int = 2000, seed: int = 0) -> pd.DataFrame:
    """Rows with exactly RUN_COLUMNS: last/weighted_sum/finetune at every fraction, layer=K at the largest."""
    rng = np.random.default_rng(seed)
    rows = []
    for up in upstreams:
        params, n_hidden, ceiling, pre = _UPSTREAMS[up]
        modes = ["last"] if n_hidden == 1 else ["last", "weighted_sum", "finetune"]
        for ti, task in enumerate(tasks):
            for frac in fractions:
                utts = max(1, round(frac * full_train_utts))
                # Pretrained features degrade less with scarce labels (Mockingjay paper, Table 1 shape).
                scarcity = (0.10 if pre else 0.25) * (1 - frac) ** 2 + 0.03 * np.log10(1 / frac)
                runs = [(m, -1 if m == "weighted_sum" else n_hidden - 1) for m in modes]
                if frac == max(fractions) and n_hidden > 1:
                    runs += [("layer", k) for k in range(n_hidden)]
                for mode, layer in runs:
                    bonus = {"last": 0.0, "weighted_sum": 0.03, "finetune": 0.08, "layer": 0.0}[mode]
                    if mode == "layer":  # intermediate layers best (AALBERT paper)
                        bonus = 0.04 * np.sin(np.pi * layer / (n_hidden - 1)) - 0.05 * (layer == 0)
                    for s in seeds:
                        acc = float(np.clip(ceiling - 0.03 * ti + bonus - scarcity + rng.normal(0, 0.01), 0, 1))
                        w = rng.dirichlet(np.linspace(1, 3, n_hidden) * 5) if mode == "weighted_sum" else None
                        rows.append(dict(
                            run_id=f"{up}-{task}-{mode}-{layer}-{frac}-{s}", corpus="synthetic", upstream=up,
                            preset="small" if up != "mel" else "default", ckpt_hash=f"{abs(hash(up)) % 16**8:08x}",
                            params=params, pretrain_frames=3_600_000 if pre else 0, pretrain_seconds=900.0 if pre else 0,
                            task=task, mode=mode, layer=layer, fraction=frac, train_utts=utts,
                            train_frames=utts * 300, seed=s, metric=TASKS[task], dev_metric=acc + 0.005,
                            test_metric=acc, test_utt_metric=acc + 0.1 if task == "speaker_frame" else np.nan,
                            best_step=100, steps=200, budget="converge", converged=True, wall_seconds=5.0,
                            layer_weights=";".join(f"{x:.4f}" for x in w) if w is not None else "",
                            device="cpu x2", toolkit_version="0.1.0", git_commit="abc", date="2026-11-25"))
    return pd.DataFrame(rows, columns=list(RUN_COLUMNS))
