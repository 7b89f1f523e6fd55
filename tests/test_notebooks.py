"""Every notebook runs top to bottom in the fast mode (LAMB_OPTAX_SMOKE=1), and the outputs
committed from a full run are clean."""

from __future__ import annotations

import json
import os
import pathlib
import re

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


def _outputs(nb):
  for cell in nb.cells:
    if cell.cell_type != "code":
      continue
    for out in cell.get("outputs", []):
      if out.output_type == "stream":
        yield out.name, out.text
      elif out.output_type == "error":
        yield "error", "\n".join([out.ename, out.evalue, *out.traceback])
      else:
        for mime, data in out.get("data", {}).items():
          if mime.startswith("text/"):
            yield mime, data if isinstance(data, str) else "".join(data)


# A machine's paths: site-packages, home or work directories, temp dirs, Windows drives.
_MACHINE_PATH = re.compile(r"site-packages|/home/|/work/|/tmp/|/usr/|/root/|[A-Z]:\\\\")


@pytest.mark.parametrize("path", NOTEBOOKS, ids=lambda p: p.name)
def test_committed_outputs_are_clean(path):
  """The committed outputs of a full run: no warnings, no machine paths, short progress bars."""
  nb = nbformat.read(path, as_version=4)
  code = [c for c in nb.cells if c.cell_type == "code"]
  assert all(c.execution_count is not None for c in code), "not executed top to bottom"
  assert any(c.get("outputs") for c in code), "committed without outputs"
  for kind, text in _outputs(nb):
    assert kind != "error", text
    assert "IProgress" not in text and "Warning" not in text, (kind, text)
    assert not _MACHINE_PATH.search(text), (kind, text)
    if kind == "stderr":  # progress bars: each saved as its final line
      assert "\r" not in text
      assert len(text.splitlines()) <= 2, text
  assert "execution" not in json.dumps([c.metadata for c in code])  # no timestamps


def test_quickstart_says_how_many_lines_it_has():
  nb = nbformat.read(NOTEBOOKS[0], as_version=4)
  said = int(re.search(r"in (\d+) lines of code", nb.cells[0].source).group(1))
  code = [c.source for c in nb.cells[3:] if c.cell_type == "code"]  # after install and SMOKE
  lines = [ln.strip() for src in code for ln in src.splitlines()]
  assert said == sum(1 for ln in lines if ln and not ln.startswith("#"))
  assert said <= 30
