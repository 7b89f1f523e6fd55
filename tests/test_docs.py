"""The documentation: its Python blocks run, every public name has an API entry, and every
relative link and repository path it mentions exists.

The docs build (`python -m sphinx -W --keep-going -b html docs docs/_build/html`, run by
.ci/run) checks the same API coverage on the built site; these tests read the sources, so they
need no build.
"""

from __future__ import annotations

import importlib.metadata
import pathlib
import re
import types

import jax
import pytest

import lamb_optax

ROOT = pathlib.Path(__file__).parent.parent
DOCS = [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]
# Pages whose links and paths are checked (the ones a reader opens on GitHub or the site).
PAGES = [
  ROOT / "README.md",
  ROOT / "CHANGELOG.md",
  ROOT / "benchmarks" / "README.md",
  ROOT / "notebooks" / "README.md",
  *sorted((ROOT / "docs").glob("*.md")),
]
# Pages that teach by example: each must hold Python blocks that run.
MUST_HAVE_CODE = {
  "README.md",
  "getting_started.md",
  *(p.name for p in (ROOT / "docs").glob("migrating_from_*.md")),
}
# The frameworks of the migration guides' "before" halves, which are not installed here.
_PEERS = ("mindspore", "torch", "timm", "apex", "deepspeed", "keras", "tensorflow_addons")


def _blocks(path):
  return re.findall(r"```python\n(.*?)```", path.read_text(), flags=re.S)


def _runnable(code):
  """False for a block written against a peer's framework (a guide's "before" half)."""
  return not re.search(rf"^(?:from|import) (?:{'|'.join(_PEERS)})\b", code, flags=re.M)


@pytest.mark.parametrize("path", DOCS, ids=lambda p: p.name)
def test_python_blocks_run(path):
  blocks = [b for b in _blocks(path) if _runnable(b)]
  if path.name in MUST_HAVE_CODE:
    assert blocks, f"{path.name} has no runnable python block"
  namespace: dict = {}
  # user code runs with JAX's default rank promotion, not the suite's strict setting
  with jax.numpy_rank_promotion("allow"):
    for code in blocks:  # blocks of one file share a namespace, as in a session
      exec(compile(code, str(path), "exec"), namespace)


# --- API reference -----------------------------------------------------------------------


def _public_names():
  names = {"lamb_optax.__version__"}
  for module in (lamb_optax, lamb_optax.masks, lamb_optax.mindspore_compat):
    for name in module.__all__:
      if not isinstance(getattr(module, name), types.ModuleType):
        names.add(f"{module.__name__}.{name}")
  return names


def _api_entries():
  """Fully qualified names documented by `.. auto*::` directives of docs/api/*.rst."""
  entries, modules = set(), set()
  for page in sorted((ROOT / "docs" / "api").glob("*.rst")):
    current = None
    for line in page.read_text().splitlines():
      m = re.match(r"\.\. (module|currentmodule|automodule):: (\S+)", line.strip())
      if m:
        current = m.group(2)
        if m.group(1) != "currentmodule":
          modules.add(current)
        continue
      m = re.match(r"\.\. auto(function|class|data|exception):: (\S+)", line.strip())
      if m:
        name = m.group(2)
        entries.add(name if name.startswith("lamb_optax.") else f"{current}.{name}")
  return entries, modules


def test_every_public_name_has_an_api_entry():
  entries, modules = _api_entries()
  assert sorted(_public_names() - entries) == []
  assert {"lamb_optax", "lamb_optax.masks", "lamb_optax.mindspore_compat"} <= modules


def test_api_entries_are_public_names():
  entries, _ = _api_entries()
  assert sorted(entries - _public_names()) == []


def test_api_pages_are_in_the_toctree():
  index = (ROOT / "docs" / "index.md").read_text()
  for page in (ROOT / "docs" / "api").glob("*.rst"):
    assert f"api/{page.stem}\n" in index, page.name


def test_every_notebook_has_a_docs_page():
  toc = (ROOT / "docs" / "notebooks.md").read_text()
  for nb in (ROOT / "notebooks").glob("*.ipynb"):
    assert f"notebooks/{nb.stem}\n" in toc, nb.name


def test_version_is_the_installed_version():
  assert lamb_optax.__version__ == importlib.metadata.version("lamb_optax")


# --- links and paths ---------------------------------------------------------------------


def _prose(path):
  """The text of a Markdown page without its fenced code blocks."""
  return re.sub(r"^```.*?^```", "", path.read_text(), flags=re.S | re.M)


def _slug(heading):
  """GitHub's (and MyST's) anchor for a heading."""
  text = re.sub(r"[^\w\- ]", "", heading.strip().lower())
  return text.replace(" ", "-")


def _anchors(path):
  """Anchors of a Markdown page, including those of the files it includes whole."""
  text = path.read_text()
  anchors = {_slug(h) for h in re.findall(r"^#{1,6} (.+)$", _prose(path), flags=re.M)}
  for included in re.findall(r"```\{include\} (\S+)", text):
    anchors |= _anchors((path.parent / included).resolve())
  return anchors


def _links(path):
  prose = _prose(path)
  inline = re.findall(r"!?\[[^\]]*\]\(([^)\s]+)\)", prose)
  references = re.findall(r"^\[[^\]]+\]: (\S+)", prose, flags=re.M)
  return [t for t in inline + references if not re.match(r"[a-z]+:", t)]


@pytest.mark.parametrize("path", PAGES, ids=lambda p: str(p.relative_to(ROOT)))
def test_relative_links_point_at_files_and_anchors_that_exist(path):
  links = _links(path)
  for link in links:
    target, _, anchor = link.partition("#")
    file = (path.parent / target).resolve() if target else path
    assert file.exists(), f"{path.name}: link to missing {link}"
    if anchor and file.suffix == ".md":
      assert anchor in _anchors(file), f"{path.name}: no heading for #{anchor} in {file.name}"


_TOP = ("lamb_optax/", "tests/", "docs/", "benchmarks/", "notebooks/", ".ci/")
_ROOT_FILES = ("README.md", "CHANGELOG.md", "pyproject.toml", "LICENSE")


def _repo_paths(path):
  """Repository paths named in code spans, e.g. `tests/test_alias.py` or `docs/design.md`."""
  for span in re.findall(r"`([^`\s]+)`", _prose(path)):
    if span.startswith(_TOP) or span in _ROOT_FILES:
      yield span


@pytest.mark.parametrize("path", PAGES, ids=lambda p: str(p.relative_to(ROOT)))
def test_repository_paths_mentioned_exist(path):
  for span in _repo_paths(path):
    if span.startswith("docs/_build/"):
      continue  # the docs build's output, named as such
    file, _, test = span.partition("::")
    target = ROOT / file.rstrip(".,;:")
    if "*" in target.name:  # a glob such as `step_bench_gpu.*` names files that existed once
      continue
    assert target.exists(), f"{path.name} names {span}, which is not in the repository"
    if test:
      assert f"def {test}(" in target.read_text(), f"{path.name}: no {test} in {file}"


def test_design_sections_cited_by_the_code_exist():
  headings = {
    h.strip().lower()
    for h in re.findall(r"^#{1,6} (.+)$", _prose(ROOT / "docs" / "design.md"), flags=re.M)
  }
  cited = []
  for py in [*ROOT.glob("lamb_optax/**/*.py"), *ROOT.glob("tests/*.py")]:
    cited += re.findall(r'design\.md,? \(?"([^"]+)"', py.read_text())
  assert cited
  for section in cited:
    assert any(h.startswith(section.lower()) for h in headings), section


def test_no_reference_to_the_old_design_file():
  for path in [*PAGES, *ROOT.glob("lamb_optax/**/*.py"), *ROOT.glob("tests/*.py")]:
    if path.name != "test_docs.py":
      assert "DESIGN.md" not in path.read_text(), path
