"""Low-level helpers shared by every layer: atomic I/O, hashing, frame arithmetic, audio loading, reproducibility."""

__version__ = "0.1.0"
