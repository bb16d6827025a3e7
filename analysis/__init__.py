"""Analyses of trained upstreams (self-attention maps and statistics)."""
