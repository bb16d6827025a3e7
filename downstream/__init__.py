"""Probes on upstream hidden states: task registry, heads, layer modes, label fractions and probe training."""
