"""The run: per upstream, its inputs built, the hidden states the plan reads from the cache, every pending probe
trained and its row appended (runner.py); `prepare` builds a sharded sweep's shared inputs once (prepare.py)."""
