"""Figures: matplotlib set up headless, and a PNG written atomically. Every package that draws (the report, the
pretraining loss curve, the analyses) imports `plt` from here, so the backend is chosen once, before pyplot loads."""
from __future__ import annotations

import io
from pathlib import Path

import matplotlib

matplotlib.use("Agg")  # headless and deterministic: nothing here ever needs a display
import matplotlib.pyplot as plt  # noqa: E402

from core.io import atomic_write_bytes  # noqa: E402

__all__ = ["plt", "save_figure"]


def save_figure(fig: plt.Figure, path: Path) -> Path:
    """Render to memory then write atomically, so a half-written PNG never replaces a good one."""
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=110, bbox_inches="tight")
    plt.close(fig)
    atomic_write_bytes(path, buf.getvalue())
    return path
