"""Checks the docs build makes on itself; each failure is a Sphinx warning (an error under -W).

Also maps links to repository files that the site includes as pages (the README's
``[CHANGELOG.md](CHANGELOG.md)``) onto those pages.

- every public name (``lamb_optax.__all__``, ``lamb_optax.masks.__all__``,
  ``lamb_optax.mindspore_compat.__all__``, ``lamb_optax.__version__``) is
  documented by an API page;
- every notebook in ``notebooks/`` has a page, and that page shows the
  notebook's committed outputs (one rendered output block per code cell that
  has outputs).
"""

from __future__ import annotations

import json
import pathlib
import types
from typing import Any

from docutils import nodes
from sphinx.util import logging

logger = logging.getLogger(__name__)

ROOT = pathlib.Path(__file__).parent.parent.parent


def public_names() -> list[str]:
  """The fully qualified public names of lamb_optax that need an API entry."""
  import lamb_optax

  names = ["lamb_optax.__version__"]
  for module in (lamb_optax, lamb_optax.masks, lamb_optax.mindspore_compat):
    for name in module.__all__:
      if not isinstance(getattr(module, name), types.ModuleType):
        names.append(f"{module.__name__}.{name}")
  return names


def _check_api(app: Any, env: Any) -> None:
  documented = set(env.get_domain("py").objects)
  for name in public_names():
    if name not in documented:
      logger.warning("public name %s has no entry in docs/api/", name)
  for module in ("lamb_optax", "lamb_optax.masks", "lamb_optax.mindspore_compat"):
    if module not in env.get_domain("py").modules:
      logger.warning("module %s has no page in docs/api/", module)


def _committed_outputs(path: pathlib.Path) -> int:
  nb = json.loads(path.read_text())
  return sum(1 for c in nb["cells"] if c["cell_type"] == "code" and c.get("outputs"))


def _check_notebook_page(app: Any, doctree: nodes.document, docname: str) -> None:
  if not docname.startswith("notebooks/"):
    return
  source = ROOT / "notebooks" / (docname.split("/", 1)[1] + ".ipynb")
  want = _committed_outputs(source)
  got = sum(
    1
    for node in doctree.findall(nodes.container)
    if "cell_output" in node.get("classes", []) and len(node.children) > 0
  )
  if want == 0:
    logger.warning("notebook %s has no committed outputs to render", source.name)
  elif got != want:
    logger.warning(
      "page %s renders %d output blocks, the notebook has %d code cells with outputs",
      docname,
      got,
      want,
    )


def _check_every_notebook_has_a_page(app: Any, env: Any) -> None:
  for path in sorted((ROOT / "notebooks").glob("*.ipynb")):
    if f"notebooks/{path.stem}" not in env.found_docs:
      logger.warning("notebook %s has no page in the docs", path.name)


# Files outside docs/ that a page includes whole: a link to one is a link to that page.
_INCLUDED_AS_PAGE = {"CHANGELOG.md": "changelog", "README.md": "index"}


def _link_included_files(app: Any, doctree: nodes.document) -> None:
  from sphinx import addnodes

  for node in doctree.findall(addnodes.pending_xref):
    page = _INCLUDED_AS_PAGE.get(node.get("reftarget", ""))
    if node.get("reftype") == "myst" and page is not None:
      node["refdomain"] = "doc"
      node["reftarget"] = page
      node["reftargetid"] = None


def setup(app: Any) -> dict[str, Any]:
  app.connect("doctree-read", _link_included_files)
  app.connect("env-check-consistency", _check_api)
  app.connect("env-check-consistency", _check_every_notebook_has_a_page)
  app.connect("doctree-resolved", _check_notebook_page)
  return {"parallel_read_safe": True, "parallel_write_safe": True, "version": "1"}
