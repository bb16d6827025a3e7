"""Thin command line of the benchmark harness: `python run_benchmark.py --help` (see docs/benchmark.md)."""
import sys

if __name__ == "__main__":
    # imported here, not above: the corpus builder's worker processes import this file again (as multiprocessing's
    # forkserver children do), and each would pay for the whole harness's imports (0.15 s x the built-in corpus's
    # 290 speakers)
    from benchmark.cli import main

    sys.exit(main())
