"""Sphinx configuration for the lamb_optax documentation.

Build (from the repository root, with the ``docs`` extra installed)::

  python -m sphinx -W --keep-going -b html docs docs/_build/html

Sphinx reads the docstrings, which are reStructuredText with Sphinx roles and
``.. math::`` blocks as in optax and flax; MyST-NB reads the Markdown pages and
renders the notebooks of ``notebooks/`` with their committed outputs (it never
executes them).
"""

from __future__ import annotations

import pathlib
import re
import shutil
import sys
from typing import Any

HERE = pathlib.Path(__file__).parent
ROOT = HERE.parent
sys.path.insert(0, str(HERE / "_ext"))

import lamb_optax  # noqa: E402

project = "lamb_optax"
author = "lamb_optax developers"
copyright = "lamb_optax developers, Apache-2.0"
version = release = lamb_optax.__version__

extensions = [
  "sphinx.ext.autodoc",
  "sphinx.ext.autosummary",
  "sphinx.ext.napoleon",
  "sphinx.ext.mathjax",
  "sphinx.ext.viewcode",
  "myst_nb",  # also loads myst_parser for the .md pages
  "lamb_optax_checks",  # docs/_ext: every public name documented, every notebook rendered
]

source_suffix = {".rst": "restructuredtext", ".md": "myst-nb", ".ipynb": "myst-nb"}
exclude_patterns = ["_build", "Thumbs.db", ".DS_Store"]
root_doc = "index"

# Docstrings: Google style (Args/Returns/Raises/Examples), read by napoleon.
napoleon_google_docstring = True
napoleon_numpy_docstring = False
napoleon_use_rtype = False
autodoc_member_order = "bysource"
autodoc_typehints = "signature"
autodoc_preserve_defaults = True
autosummary_generate = False  # the API pages list every name themselves
# Show the names of the argument types, not their expansion into long unions.
_ALIASES = {
  "ArrayLike": "jax.typing.ArrayLike",
  "LearningRate": "lamb_optax._src.schedules.LearningRate",
  "ScalarOrSchedule": "lamb_optax._src.transforms.ScalarOrSchedule",
  "MaskOrFn": "lamb_optax._src.masks.MaskOrFn",
  "LayerAxes": "lamb_optax._src.transforms.LayerAxes",
}
autodoc_type_aliases = {
  **{name: name for name in _ALIASES},
  "jax.typing.ArrayLike": "ArrayLike",
  "schedules.LearningRate": "LearningRate",
  "transforms.ScalarOrSchedule": "ScalarOrSchedule",
  "transforms.LayerAxes": "LayerAxes",
  "masks_lib.MaskOrFn": "MaskOrFn",
}

# Markdown: GitHub-style heading anchors (README's [x](#speed-and-memory) links).
myst_heading_anchors = 3
myst_enable_extensions = ["dollarmath"]

# Notebooks: render the committed outputs, never execute (the test suite runs them).
nb_execution_mode = "off"
nb_merge_streams = True

html_theme = "furo"
html_title = f"lamb_optax {release}"
html_static_path: list[str] = []

# No intersphinx: the build must work offline (CI reaches package registries only).


def _tidy_signature(
  app: Any, what: str, name: str, obj: Any, options: Any, signature: str, return_annotation: str
) -> tuple[str, str]:
  """``ArrayLike | None``, not ``TypeAliasForwardRef('ArrayLike') | None``, inside ``Optional``."""
  if signature:
    signature = re.sub(r"TypeAliasForwardRef\('([^']*)'\)", r"\1", signature)
  return signature, return_annotation


def setup(app: Any) -> None:
  app.connect("autodoc-process-signature", _tidy_signature)


def _copy_notebooks() -> None:
  """Copies ``notebooks/*.ipynb`` under ``docs/notebooks/`` (git-ignored), where Sphinx reads them.

  The notebooks live in ``notebooks/`` so that their Colab badges and the test
  suite find them there; Sphinx only reads sources inside ``docs/``.
  """
  dest = HERE / "notebooks"
  dest.mkdir(exist_ok=True)
  wanted = {p.name for p in (ROOT / "notebooks").glob("*.ipynb")}
  for stale in dest.glob("*.ipynb"):
    if stale.name not in wanted:
      stale.unlink()
  for name in sorted(wanted):
    src, dst = ROOT / "notebooks" / name, dest / name
    if not dst.exists() or dst.read_bytes() != src.read_bytes():
      shutil.copyfile(src, dst)


_copy_notebooks()
