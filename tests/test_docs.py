"""The documentation stays true: every ```python block of the README and of docs/plugins.md
runs as written, in order, one namespace per file (as a reader pasting them one after the other
into one interpreter would), and the module paths the docs name exist.

One test per block; a block's test runs the blocks before it in its file's namespace first
when they have not run yet in this process (under ``pytest -n`` a block may land in another
worker than its predecessors). A block that defines ``test_*`` functions has them called, as
pytest would. Each block runs from a file of its own in pytest's cache folder (Numba's
``cache=True`` needs a source file), padded so that tracebacks give the document's line
numbers.
"""

from __future__ import annotations

import os
import re
import sys
import types
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
RUN_DOCS = ("README.md", "docs/plugins.md")
PATH_DOCS = ("README.md", "docs/architecture.md", "docs/plugins.md", "docs/performance.md",
             "docs/performance-history.md")

PYTHON_BLOCK = re.compile(r"^```python\n(.*?)^```[ \t]*$", re.S | re.M)

#: Blocks that are wrong in a way only their document's owner may fix:
#: {(document, index among its python blocks): why}. Each is an xfail(strict=True): the test
#: fails as soon as the block runs, so that this entry goes with the fix.
KNOWN_WRONG: dict[tuple[str, int], str] = {}


def python_blocks(document: str) -> list[tuple[int, str]]:
    """``[(line number, code), ...]`` of the ```python blocks of ``document``, in order."""
    text = (ROOT / document).read_text(encoding="utf-8")
    return [(text.count("\n", 0, match.start()) + 1, match.group(1))
            for match in PYTHON_BLOCK.finditer(text)]


def _block_params():
    params = []
    for document in RUN_DOCS:
        for index, (line, _) in enumerate(python_blocks(document)):
            reason = KNOWN_WRONG.get((document, index))
            marks = [pytest.mark.xfail(strict=True, reason=reason)] if reason else []
            params.append(pytest.param(document, index, id=f"{document}:{line}", marks=marks))
    return params


class _Namespace:
    """One document's namespace and how many of its blocks have run in it: a module in
    ``sys.modules``, where Numba looks for the globals of a cached kernel."""

    def __init__(self, document: str):
        name = "doc_" + re.sub(r"\W", "_", document)
        module = sys.modules[name] = types.ModuleType(name)
        self.globals: dict = module.__dict__
        self.done = 0


_namespaces: dict[str, _Namespace] = {}


def _source_file(folder: Path, document: str, line: int, code: str) -> Path:
    """The block as a file whose line numbers are the document's; rewritten only when its
    text changed, so that Numba's cache of its kernels stays valid."""
    path = folder / f"{document.replace('/', '-')}-{line}.py"
    text = "\n" * line + code
    if not path.exists() or path.read_text(encoding="utf-8") != text:
        part = path.with_name(f"{path.name}.{os.getpid()}.part")  # pytest -n: workers race
        part.write_text(text, encoding="utf-8")
        os.replace(part, path)
    return path


def _run(folder: Path, document: str, index: int, namespace: dict) -> None:
    line, code = python_blocks(document)[index]
    path = _source_file(folder, document, line, code)
    before = set(namespace)
    exec(compile(path.read_text(encoding="utf-8"), str(path), "exec"), namespace)
    for name in sorted(set(namespace) - before):
        if name.startswith("test_") and callable(namespace[name]):
            namespace[name]()


@pytest.fixture(scope="session")
def block_folder(request, tmp_path_factory) -> Path:
    cache = getattr(request.config, "cache", None)  # None with -p no:cacheprovider
    return cache.mkdir("doc-blocks") if cache is not None else tmp_path_factory.mktemp("doc")


@pytest.mark.parametrize("document, index", _block_params())
def test_python_block_runs(block_folder, document, index):
    state = _namespaces.get(document)
    if state is None or state.done > index:  # (again) from the top: a fresh namespace
        state = _namespaces[document] = _Namespace(document)
    while state.done < index:  # the blocks before it, whose own tests report their failures
        try:
            _run(block_folder, document, state.done, state.globals)
        except Exception:
            pass
        state.done += 1
    state.done += 1
    _run(block_folder, document, index, state.globals)


def test_the_documents_have_python_blocks():
    for document in RUN_DOCS:
        assert python_blocks(document), f"{document} has no ```python block"


def test_plugin_guide_names_no_private_api():
    """The guide for plugin authors shows only public names: nothing starting with one
    underscore (dunders such as ``__init__`` are Python's, not ours)."""
    text = (ROOT / "docs/plugins.md").read_text(encoding="utf-8")
    private = sorted(set(re.findall(r"(?<!\w)_[A-Za-z]\w*", text)))
    assert not private, f"docs/plugins.md uses private names {private}"


MODULE_PATH = re.compile(r"(?<![\w/.])((?:numbaconv|tests|bench|plugins|docs)/[\w./-]*\w)")


@pytest.mark.parametrize("document", PATH_DOCS)
def test_named_paths_exist(document):
    """Every repository path a document names (``numbaconv/layers/fusion.py``,
    ``numbaconv/kernels/cpu/``...) exists."""
    text = (ROOT / document).read_text(encoding="utf-8")
    named = sorted(set(MODULE_PATH.findall(text)))
    missing = [path for path in named if not (ROOT / path).exists()]
    assert not missing, f"{document} names paths that do not exist: {missing}"
