"""`python -m benchmark.report [RESULTS_DIR]`: REPORT.md, tables, plots and the site rebuilt from RESULTS_DIR/runs.csv
(benchmark.report.build.main)."""
import sys

from benchmark.report.build import main

sys.exit(main())
