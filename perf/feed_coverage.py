"""How many speakers a training chunk of the frozen-probe feed holds (downstream.feeds), contiguous blocks against
scattered ones, on a cached upstream's training frames: the classes each stretch of minibatches sees.

    .venv/bin/python perf/feed_coverage.py --upstream mockingjay --upstream mel --out results/feed_coverage.json

For the first `--passes` passes' chunks: speakers present (of the split's), and the largest speaker's share of the
chunk's rows as a multiple of its share in the split (the cache's offsets only). Then what a streamed block costs to
read from the cache file, one hidden state, best of 3 over `--blocks` blocks: a contiguous block (one positioned read),
a scattered one as the feed reads it (`SplitArrays.read_runs`: the file opened once, a read per piece into one
buffer) and the same pieces each read by `np.fromfile` (the file opened per piece).
"""
from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from benchmark.report.convergence import CACHED_UPSTREAM_HELP, cached_frames, cached_identity  # noqa: E402
from core.io import atomic_write_json  # noqa: E402
from core.repro import provenance  # noqa: E402
from corpora.manifest import load_corpus  # noqa: E402
from downstream import feeds  # noqa: E402
from downstream.tasks import ALL_TASKS  # noqa: E402


def coverage(offsets: np.ndarray, speakers: np.ndarray, scattered: bool, passes: int) -> dict:
    n = int(offsets[-1])
    blocks = feeds.block_layout(n, scattered)
    split_share = np.bincount(speakers) / n  # each speaker's share of the split's rows
    present, over = [], []
    for k in range(passes):
        for chunk in feeds.pass_order(len(blocks), k):
            rows = np.concatenate([feeds.block_rows(blocks[b], feeds.run_rows(scattered), n) for b in chunk])
            spk = speakers[rows]
            ids, counts = np.unique(spk, return_counts=True)
            present.append(len(ids))
            over.append(float((counts / len(rows) / split_share[ids]).max()))
    return {"speakers_per_chunk": {"mean": round(float(np.mean(present)), 1), "min": int(min(present)),
                                   "max": int(max(present))},
            "largest_share_over_split": round(float(np.mean(over)), 2), "chunks": len(present)}


def read_costs(arrays, n_blocks: int) -> dict:
    """Milliseconds per block of hidden state 0 (see the module's docstring), best of 3."""
    n = int(arrays.offsets[-1])
    scattered = feeds.block_layout(n, True)[:n_blocks]
    runs = [[(int(a), min(n, int(a) + feeds.PIECE_ROWS)) for a in b] for b in scattered]
    h = arrays.hidden
    d, size = h.shape[2], h.shape[2] * h.dtype.itemsize

    def per_piece(block_runs):
        return np.concatenate([np.fromfile(h.filename, dtype=h.dtype, count=(b - a) * d, offset=h.offset + a * size)
                               .reshape(-1, d) for a, b in block_runs])

    ways = {"contiguous": lambda: [arrays.read(0, k * feeds.BLOCK_ROWS, min(n, (k + 1) * feeds.BLOCK_ROWS))
                                   for k in range(n_blocks)],
            "scattered, read_runs": lambda: [arrays.read_runs(0, r) for r in runs],
            "scattered, np.fromfile per piece": lambda: [per_piece(r) for r in runs]}
    out = {}
    for name, fn in ways.items():
        best = float("inf")
        for _ in range(3):
            t0 = time.perf_counter()
            fn()
            best = min(best, time.perf_counter() - t0)
        out[name] = round(1e3 * best / n_blocks, 3)
    assert all(np.array_equal(arrays.read_runs(0, r), per_piece(r)) for r in runs[:4])
    return out


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--upstream", action="append", default=None, help=f"{CACHED_UPSTREAM_HELP} (repeatable)")
    p.add_argument("--corpus", default="data/synth")
    p.add_argument("--cache-dir", type=Path, default=Path("cache/features"))
    p.add_argument("--passes", type=int, default=4)
    p.add_argument("--blocks", type=int, default=40, help="blocks timed per way of reading")
    p.add_argument("--out", type=Path, default=None)
    a = p.parse_args(argv)
    corpus = load_corpus(a.corpus)
    utt_speaker = np.unique([u.speaker for u in corpus.utterances("train")], return_inverse=True)[1]
    out = []
    for spec in a.upstream or ["mockingjay"]:
        try:
            row = cached_identity(a.cache_dir, spec, corpus)
            src, _ = cached_frames(a.cache_dir, row, corpus, ALL_TASKS["speaker_frame"])
        except (FileNotFoundError, ValueError) as e:
            print(f"error: {e}", file=sys.stderr)
            return 2
        offsets = src.splits["train"].offsets
        speakers = np.repeat(utt_speaker, np.diff(offsets))  # each row's speaker
        for scattered in (False, True):
            o = {"upstream": spec, "rows": int(offsets[-1]), "speakers": int(utt_speaker.max() + 1),
                 "blocks": "scattered" if scattered else "contiguous",
                 **coverage(offsets, speakers, scattered, a.passes)}
            print(json.dumps(o), flush=True)
            out.append(o)
        if isinstance(src.splits["train"].hidden, np.memmap):
            o = {"upstream": spec, "ms_per_block_read": read_costs(src.splits["train"], a.blocks)}
            print(json.dumps(o), flush=True)
            out.append(o)
    if a.out is not None:
        atomic_write_json(a.out, {"block_rows": feeds.BLOCK_ROWS, "piece_rows": feeds.PIECE_ROWS,
                                  "chunk_blocks": feeds.CHUNK_BLOCKS, "rows": out, "provenance": provenance("cpu"),
                                  "command": " ".join(["python", "perf/feed_coverage.py", *(argv or sys.argv[1:])])})
    return 0


if __name__ == "__main__":
    sys.exit(main())
