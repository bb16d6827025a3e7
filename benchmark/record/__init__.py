"""The record: one row per run (schema.py), its files results/runs.csv, the shards' rows and leaderboard.csv
(results.py), and the rows read back and aggregated over seeds (aggregate.py). Imports no other part of the harness."""
