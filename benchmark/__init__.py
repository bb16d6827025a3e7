"""The harness: wires corpora, upstreams and probes into runs, results rows, leaderboards and reports."""
