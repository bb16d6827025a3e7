"""Peak memory and time of extracting one split into the feature cache, in a fresh process.

Reports ru_maxrss before extraction (torch, model, manifest loaded) and after, so the figure isolates what
streaming extraction adds, against the size of the array it wrote.

    .venv/bin/python perf/cache_extraction_memory.py --corpus data/synth --upstream mockingjay_random --split train
"""
from __future__ import annotations

import argparse
import resource
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from benchmark.cache.extract import ensure_split  # noqa: E402
from benchmark.inputs.corpus import resolve_corpus  # noqa: E402
from benchmark.inputs.upstream import resolve_upstream


def rss_mib() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--corpus", default="data/synth")
    p.add_argument("--upstream", default="mockingjay_random")
    p.add_argument("--split", default="train", choices=("train", "dev", "test"))
    a = p.parse_args()
    corpus = resolve_corpus(a.corpus, Path("data"), quick=False)
    up = resolve_upstream(a.upstream, corpus, {}, Path("runs/pretrain"), False, log=lambda *m: None)
    utts = corpus.utterances(a.split)
    before = rss_mib()
    with tempfile.TemporaryDirectory() as tmp:
        t0 = time.perf_counter()
        arr, _ = ensure_split(Path(tmp), up.identity, up.model, corpus, a.split, utts, progress=False)
        seconds = time.perf_counter() - t0
        size = arr.hidden.nbytes / 2**20
        print(f"{a.upstream} {corpus.name}/{a.split}: {len(utts)} utterances, {arr.hidden.shape[1]} frames x "
              f"{arr.hidden.shape[0]} hidden states x {arr.hidden.shape[2]} dims -> {size:.0f} MiB float16 in "
              f"{seconds:.0f} s; peak RSS {before:.0f} MiB before extraction, {rss_mib():.0f} MiB after")
    return 0


if __name__ == "__main__":
    sys.exit(main())
