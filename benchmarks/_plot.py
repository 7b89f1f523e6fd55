"""The matplotlib set-up and finish shared by the benchmark scripts (headless, Agg)."""

from __future__ import annotations

import pathlib
from typing import Any


def axes(width: float = 6) -> tuple[Any, Any]:
  """A new ``(figure, axes)`` pair, 4 inches high, drawn without a display."""
  import matplotlib

  matplotlib.use("Agg")
  import matplotlib.pyplot as plt

  return plt.subplots(figsize=(width, 4))


def save(fig: Any, ax: Any, path: pathlib.Path, *, xlabel: str, ylabel: str, title: str) -> None:
  """Labels, title and legend on ``ax``; ``fig`` written to ``path`` and closed."""
  import matplotlib.pyplot as plt

  ax.set_xlabel(xlabel)
  ax.set_ylabel(ylabel)
  ax.set_title(title)
  ax.legend()
  fig.tight_layout()
  fig.savefig(path, dpi=110)
  plt.close(fig)
