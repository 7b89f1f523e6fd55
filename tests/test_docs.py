"""The Python blocks of README.md and docs/*.md run as written."""

from __future__ import annotations

import pathlib
import re

import jax
import pytest

ROOT = pathlib.Path(__file__).parent.parent
DOCS = [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]


def _blocks(path):
  return re.findall(r"```python\n(.*?)```", path.read_text(), flags=re.S)


def _runnable(code):
  return "from mindspore" not in code  # the MindSpore half of the migration guide


@pytest.mark.parametrize("path", DOCS, ids=lambda p: p.name)
def test_python_blocks_run(path):
  blocks = [b for b in _blocks(path) if _runnable(b)]
  assert blocks, f"{path.name} has no runnable python block"
  namespace: dict = {}
  # user code runs with JAX's default rank promotion, not the suite's strict setting
  with jax.numpy_rank_promotion("allow"):
    for code in blocks:  # blocks of one file share a namespace, as in a session
      exec(compile(code, str(path), "exec"), namespace)
