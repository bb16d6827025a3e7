"""results/site/: the leaderboard as static HTML pages that open from the file system, rendered from the same
tables as REPORT.md (benchmark.report.build builds both). `build_site` is the entry point; `browser` drives headless
Chromium for the tests and the README's screenshot."""
