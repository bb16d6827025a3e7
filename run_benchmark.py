"""Thin command line of the benchmark harness: `python run_benchmark.py --help` (see docs/benchmark.md)."""
import sys

from benchmark.cli import main

if __name__ == "__main__":
    sys.exit(main())
