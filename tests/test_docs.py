"""The documentation site (docs/) stays complete and its code runs.

The build itself (``sphinx-build -n -W --keep-going -b html docs
docs/_build/html``, run by .ci/run) fails on broken references, broken
internal links and notebook errors; these tests check what the build cannot:
every public name has an API entry, every member has its page, and the
``python`` code blocks of the pages run.
"""

from __future__ import annotations

import importlib
import importlib.util
import re
import signal
from pathlib import Path

import pytest

import captum_sfam
from captum_sfam.methods import REGISTRY

ROOT = Path(__file__).resolve().parent.parent
DOCS = ROOT / "docs"
API = DOCS / "api"

#: folders of docs/ that hold no hand-written page
NOT_PAGES = ("_build", "api", "tools", "jupyter_execute")
#: build-time copies (tutorials/notebooks) and generated pages
GENERATED = ("tutorials/notebooks", "benchmarks/generated")

#: a block whose first line is this comment is shown, not run
NOT_RUN = "# not run"
#: seconds one block may take
BLOCK_TIMEOUT = 60


def apigen():
    spec = importlib.util.spec_from_file_location(
        "_apigen", DOCS / "tools" / "apigen.py"
    )
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def api_text() -> str:
    return "\n".join(p.read_text() for p in sorted(API.glob("*.rst")))


def test_every_top_level_name_is_in_the_api_reference():
    text = (API / "captum_sfam.rst").read_text()
    missing = [n for n in captum_sfam.__all__ if f"``{n}``" not in text]
    assert not missing, f"not in docs/api/captum_sfam.rst: {missing}"


@pytest.mark.parametrize("area", [a for a, _, _ in apigen().AREAS])
def test_every_public_name_of_an_area_is_documented(area):
    module = importlib.import_module(area)
    text = api_text()
    missing = [
        n
        for n in apigen().public_names(module)
        if not re.search(rf"(auto\w+:: [\w.]+\.{n}\b|~[\w.]+\.{n}\b)", text)
    ]
    assert not missing, f"{area}: no API entry for {missing}"


def test_api_pages_are_up_to_date():
    """docs/api/ is what docs/tools/apigen.py writes (run it after a change)."""
    for name, text in apigen().pages().items():
        path = API / name
        assert path.is_file(), f"{path} is missing: run python docs/tools/apigen.py"
        assert path.read_text() == text, (
            f"{path} is stale: run python docs/tools/apigen.py"
        )


@pytest.mark.parametrize("key", sorted(REGISTRY))
def test_every_member_has_its_page(key):
    page = DOCS / "members" / f"{key}.md"
    assert page.is_file(), f"REGISTRY member {key!r} has no page {page}"
    assert key in (DOCS / "index.md").read_text(), f"members/{key} not in the toctree"


def pages() -> list[Path]:
    out = []
    for page in sorted(DOCS.rglob("*.md")):
        rel = page.relative_to(DOCS)
        if rel.parts[0] in NOT_PAGES:
            continue
        if any(rel.as_posix().startswith(g + "/") for g in GENERATED):
            continue
        out.append(page)
    return out


def code_blocks():
    fence = re.compile(r"^```python[^\n]*\n(.*?)^```", re.S | re.M)
    for page in pages():
        text = page.read_text()
        for match in fence.finditer(text):
            code = match.group(1)
            if code.lstrip().startswith(NOT_RUN):
                continue
            line = text.count("\n", 0, match.start()) + 1
            rel = page.relative_to(DOCS).as_posix()
            yield pytest.param(code, id=f"{rel}:{line}")


class BlockTimeout(Exception):
    pass


@pytest.mark.parametrize("code", list(code_blocks()))
def test_code_block_of_a_page_runs(code, tmp_path, monkeypatch):
    """Each ``python`` block runs on its own, in a fresh namespace."""
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("MPLBACKEND", "Agg")

    def expire(signum, frame):
        raise BlockTimeout(f"block ran over {BLOCK_TIMEOUT} s")

    previous = signal.signal(signal.SIGALRM, expire)
    signal.alarm(BLOCK_TIMEOUT)
    try:
        exec(compile(code, "<docs block>", "exec"), {"__name__": "__docs__"})
    finally:
        signal.alarm(0)
        signal.signal(signal.SIGALRM, previous)
