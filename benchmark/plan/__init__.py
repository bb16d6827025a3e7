"""The plan: what one invocation does (config.py, presets.py), the runs it expands into with their stable ids
(runs.py), each upstream's shape before it is built (shapes.py), the shards (shards.py), the feature cache's size
(cachesize.py) and `--dry-run` (dryrun.py). Reads inputs/, record/ and cache/; builds and trains nothing."""
