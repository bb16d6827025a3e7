"""Feature extraction under the two allocator rules: every large freed block unmapped (glibc's way, and the harness's
rule outside training), or kept in the heap for the next batch (the rule extraction runs under: core.allocator).

Extracts the first --utterances of a split into memory (benchmark.cache.extract.extract_arrays, the cache's own path
to float16) in a fresh process per measurement, the two rules alternating --repeats times, and reports each run's
wall time, user and system CPU seconds, minor page faults and peak RSS, and whether the features are the same bits.
A base-sized upstream shows the difference (its activations are large); the small ones barely do. Compare the
figures of one invocation with each other, not across machines or hours. Writes JSON with --out.

    .venv/bin/python perf/extract_allocator.py --upstream wav2vec2_base_random --utterances 100 \\
        --out results/extract_allocator.json
"""
from __future__ import annotations

import argparse
import contextlib
import hashlib
import json
import resource
import statistics
import subprocess
import sys
import time
from pathlib import Path
from unittest import mock

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

RULES = ("mapped", "kept")


def measure(rule: str, spec: str, corpus_dir: str, split: str, n: int) -> dict:
    """One extraction in this process under `rule`: its figures and the features' digest."""
    import numpy as np

    import benchmark.cache.extract as extract
    from benchmark.inputs.corpus import resolve_corpus
    from benchmark.inputs.upstream import resolve_upstream
    from core.allocator import map_large_blocks

    map_large_blocks()  # the harness's rule outside training (benchmark.cli)
    corpus = resolve_corpus(corpus_dir, ROOT / "data", quick=False, progress=False)
    assert corpus is not None
    up = resolve_upstream(spec, corpus, {}, ROOT / "runs", False, log=lambda m: None, progress=False)
    utts = corpus.utterances(split)[:n]
    before = resource.getrusage(resource.RUSAGE_SELF)
    t0 = time.perf_counter()
    with mock.patch.object(extract, "reuse_freed_blocks", contextlib.nullcontext) if rule == "mapped" \
            else contextlib.nullcontext():
        arrays = extract.extract_arrays(up.model, corpus, utts, progress=False)
    wall = time.perf_counter() - t0
    after = resource.getrusage(resource.RUSAGE_SELF)
    return {"rule": rule, "wall_s": round(wall, 2), "user_s": round(after.ru_utime - before.ru_utime, 2),
            "system_s": round(after.ru_stime - before.ru_stime, 2),
            "minor_faults": after.ru_minflt - before.ru_minflt, "peak_rss_mib": round(after.ru_maxrss / 1024),
            "frames": int(arrays.offsets[-1]), "sha256": hashlib.sha256(np.asarray(arrays.hidden).tobytes()).hexdigest()}


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--upstream", default="wav2vec2_base_random")
    p.add_argument("--corpus", default="data/synth")
    p.add_argument("--split", default="dev", choices=("train", "dev", "test"))
    p.add_argument("--utterances", type=int, default=100, help="the split's first N utterances (default 100)")
    p.add_argument("--repeats", type=int, default=2, help="measurements of each rule, alternating (default 2)")
    p.add_argument("--out", type=Path, help="also write the JSON here (default: print only)")
    p.add_argument("--child", choices=RULES, help=argparse.SUPPRESS)  # one measurement, in this process
    a = p.parse_args(argv)
    if a.child:
        print(json.dumps(measure(a.child, a.upstream, a.corpus, a.split, a.utterances)))
        return 0
    from core.io import atomic_write_json
    from core.repro import provenance

    runs = []
    for _ in range(a.repeats):
        for rule in RULES:
            done = subprocess.run([sys.executable, __file__, "--child", rule, "--upstream", a.upstream, "--corpus",
                                   a.corpus, "--split", a.split, "--utterances", str(a.utterances)],
                                  cwd=ROOT, capture_output=True, text=True)
            if done.returncode != 0:
                print(done.stderr[-3000:], file=sys.stderr)
                return done.returncode
            runs.append(json.loads(done.stdout.strip().splitlines()[-1]))
            print(json.dumps(runs[-1]), flush=True)
    median = {rule: {k: statistics.median(r[k] for r in runs if r["rule"] == rule)
                     for k in ("wall_s", "system_s", "minor_faults", "peak_rss_mib")} for rule in RULES}
    report = {"upstream": a.upstream, "split": a.split, "utterances": a.utterances, "runs": runs, "median": median,
              "same_bits": len({r["sha256"] for r in runs}) == 1,
              "mapped_over_kept_wall": round(median["mapped"]["wall_s"] / median["kept"]["wall_s"], 2),
              "provenance": provenance("cpu"),
              "command": " ".join(["python", "perf/extract_allocator.py", *(argv if argv is not None else sys.argv[1:])])}
    print(f"{a.upstream}: wall {median['mapped']['wall_s']} s mapped, {median['kept']['wall_s']} s kept "
          f"({report['mapped_over_kept_wall']}x); system {median['mapped']['system_s']} / {median['kept']['system_s']} s;"
          f" peak RSS {median['mapped']['peak_rss_mib']} / {median['kept']['peak_rss_mib']} MiB; "
          f"same bits: {report['same_bits']}")
    if a.out:
        atomic_write_json(a.out, report)
    return 0


if __name__ == "__main__":
    sys.exit(main())
