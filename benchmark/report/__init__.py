"""The report, rebuilt from the rows alone: REPORT.md (build.py), tables, plots, science checks, provenance, the
HTML site (site/), and the two measurements it adds: the convergence certificate (convergence.py, `certify`) and the
cost table (cost.py). `python -m benchmark.report RESULTS_DIR` rebuilds it."""
