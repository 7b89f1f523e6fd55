"""Every notebook runs top to bottom in the fast mode (LAMB_OPTAX_SMOKE=1)."""

from __future__ import annotations

import os
import pathlib

import nbformat
import pytest
from nbclient import NotebookClient

NOTEBOOKS = sorted((pathlib.Path(__file__).parent.parent / "notebooks").glob("*.ipynb"))


def test_there_are_three_notebooks():
  assert [p.name for p in NOTEBOOKS] == [
    "01_quickstart.ipynb",
    "02_parameter_groups.ipynb",
    "03_large_batch.ipynb",
  ]


@pytest.mark.parametrize("path", NOTEBOOKS, ids=lambda p: p.name)
def test_notebook_runs(path, monkeypatch, tmp_path):
  monkeypatch.setenv("LAMB_OPTAX_SMOKE", "1")
  monkeypatch.setenv("MPLBACKEND", "Agg")
  monkeypatch.delenv("XLA_FLAGS", raising=False)  # the kernel is a plain one-device process
  nb = nbformat.read(path, as_version=4)
  first = nb.cells[0].source
  assert first.startswith("# ") and "colab.research.google.com" in first and path.name in first
  assert "google.colab" in nb.cells[1].source  # the install cell runs only on Colab
  NotebookClient(
    nb, timeout=600, kernel_name="python3", resources={"metadata": {"path": str(tmp_path)}}
  ).execute()
  errors = [
    o
    for c in nb.cells
    if c.cell_type == "code"
    for o in c.get("outputs", [])
    if o.output_type == "error"
  ]
  assert not errors
  assert os.environ["LAMB_OPTAX_SMOKE"] == "1"
