"""Do an upstream's features depend on the thread count? Extraction on 1 and 2 torch threads, bit for bit.

For each upstream, extracts the first --utterances of a split into memory (benchmark.cache.extract.extract_arrays,
the cache's own path to float16) three ways, side by side in one process:
  - unpinned on 1 thread and on 2 (the rule before core.repro.UPSTREAM_THREADS: every thread the process had), and
    counts the float16 values that differ between the two;
  - pinned (the harness's rule: every batch on UPSTREAM_THREADS threads) from a process on 1 thread and on 3, and
    with 2 batches side by side, each checked equal to the pinned reference;
with the wall time of each (the pinned ones on this machine's cores: compare them with each other, not across
machines). Writes JSON with --out.

    .venv/bin/python perf/extract_threads.py --utterances 300 --upstreams mel,mockingjay,mockingjay_random \
        --out results/extract_threads.json
"""
from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path
from unittest import mock

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import benchmark.cache.extract as extract  # noqa: E402
from benchmark.inputs.corpus import resolve_corpus  # noqa: E402
from benchmark.inputs.upstream import resolve_upstream  # noqa: E402
from core.io import atomic_write_json  # noqa: E402
from core.repro import provenance, torch_threads  # noqa: E402


def timed(up, corpus, utts, process_threads: int, workers: int | None, pinned: bool) -> tuple[np.ndarray, float]:
    """(every hidden state of `utts`, seconds) from a process on `process_threads` torch threads; unpinned: each batch
    on the process's threads, as extraction ran before UPSTREAM_THREADS."""
    with torch_threads(process_threads), \
            mock.patch.object(extract, "UPSTREAM_THREADS", extract.UPSTREAM_THREADS if pinned else process_threads):
        t0 = time.perf_counter()
        hidden = np.asarray(extract.extract_arrays(up.model, corpus, utts, progress=False, workers=workers).hidden)
        return hidden, time.perf_counter() - t0


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--corpus", default="data/synth")
    p.add_argument("--split", default="dev", choices=("train", "dev", "test"))
    p.add_argument("--utterances", type=int, default=150, help="the split's first N utterances (default 150)")
    p.add_argument("--upstreams", default="mel,mockingjay,mockingjay_random")
    p.add_argument("--out", type=Path, help="also write the JSON here (default: print only)")
    a = p.parse_args(argv)
    try:
        corpus = resolve_corpus(a.corpus, Path("data"), quick=False, progress=False)
    except ValueError as e:  # neither a prepared corpus directory nor a known corpus name
        print(f"error: {e}", file=sys.stderr)
        return 2
    assert corpus is not None  # None only with prepare=False (dry runs): an absent built-in corpus is built
    utts = corpus.utterances(a.split)[:a.utterances]
    rows = []
    for spec in a.upstreams.split(","):
        try:
            up = resolve_upstream(spec, corpus, {}, Path("runs/pretrain"), False, log=lambda *m: None,
                                  device=torch.device("cpu"), progress=False, pretrain=False)
        except (FileNotFoundError, ValueError) as e:  # an unknown upstream or preset, or a missing checkpoint
            print(f"error: --upstreams {spec}: {e}", file=sys.stderr)
            return 2
        one, s1 = timed(up, corpus, utts, 1, 1, pinned=False)
        two, s2 = timed(up, corpus, utts, 2, 1, pinned=False)
        ref, s_ref = timed(up, corpus, utts, 1, 1, pinned=True)
        same = {}
        seconds = {"unpinned 1 thread": s1, "unpinned 2 threads": s2, "pinned, process on 1 thread": s_ref}
        for label, threads, workers in [("pinned, process on 3 threads", 3, 1),
                                        ("pinned, 2 batches side by side", 1, 2)]:
            h, s = timed(up, corpus, utts, threads, workers, pinned=True)
            same[label], seconds[label] = bool(np.array_equal(h, ref)), s
        row = {"upstream": spec, "values": int(one.size), "differ_1_vs_2_threads": int((one != two).sum()),
               "pinned_equals_unpinned_at": [t for t, h in ((1, one), (2, two)) if np.array_equal(h, ref)],
               "pinned_same_bits": same, "seconds": {k: round(v, 2) for k, v in seconds.items()}}
        print(row, flush=True)
        rows.append(row)
    out = {"command": "python perf/extract_threads.py " + " ".join(sys.argv[1:] if argv is None else argv),
           "corpus": corpus.name, "split": a.split, "utterances": len(utts),
           "upstream_threads": extract.UPSTREAM_THREADS, "rows": rows, "provenance": provenance("cpu")}
    if a.out:
        atomic_write_json(a.out, out)
    return 0 if all(all(r["pinned_same_bits"].values()) for r in rows) else 1


if __name__ == "__main__":
    raise SystemExit(main())
