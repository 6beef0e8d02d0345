"""The house's rules: imports only go down a floor; warnings at the caller."""

from __future__ import annotations

import ast
import warnings
from pathlib import Path

import pytest
import torch
from helpers import TinyCNN, images

import captum_sfam
from captum_sfam import LayerCGRAM, LayerSFAM

PACKAGE = Path(captum_sfam.__file__).resolve().parent
#: top-level floors, bottom (0) to top; docs/architecture.md
FLOORS = {
    "_optional": 0, "_engine": 0, "functional": 0, "methods": 0,
    "similarity": 0, "transforms": 0, "images": 1, "image_text": 1, "metrics": 2,
    "visualization": 2, "retrieval": 3, "demo": 3, "app": 4,
}  # fmt: skip
#: the engine's own floors, bottom to top
ENGINE = {
    "checks": 0, "captum_compat": 0, "model": 1, "pairs": 1, "layer": 2,
    "references": 2, "taps": 2, "graph": 3, "correspondence": 3, "base": 4,
    "forward": 5, "gradient": 5, "blocks": 6,
}  # fmt: skip
CORE = ["_engine", "functional", "methods", "similarity", "transforms"]
CORE_ORDER = {"_optional": 0, "_engine": 1, "functional": 1, "methods": 2}


def _imports(path: Path):
    """(target module parts, line) of every package import in ``path``."""
    module = path.relative_to(PACKAGE).with_suffix("").parts
    package = module[:-1] if path.name != "__init__.py" else module[:-1]
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.ImportFrom) and node.level:
            base = list(package[: len(package) - node.level + 1])
            if node.module is None:  # from . import a, b: the modules a, b
                for alias in node.names:
                    yield tuple(base + [alias.name]), node.lineno
                continue
            yield tuple(base + node.module.split(".")), node.lineno
        elif isinstance(node, ast.ImportFrom) and (node.module or "").startswith(
            "captum_sfam."
        ):
            yield tuple(node.module.split(".")[1:]), node.lineno


def _violations():
    for path in sorted(PACKAGE.rglob("*.py")):
        own = path.relative_to(PACKAGE).with_suffix("").parts
        if own in (("__init__",),):
            continue  # the package root re-exports the public API
        for target, line in _imports(path):
            if not target or target[0] == own[0]:
                if own[0] == "_engine" and len(target) > 1 and len(own) > 1:
                    if own[1] != "__init__" and ENGINE.get(target[1], 0) > ENGINE.get(
                        own[1], 0
                    ):
                        yield f"{path.name}:{line} imports _engine.{target[1]}"
                continue
            mine, theirs = FLOORS.get(own[0]), FLOORS.get(target[0])
            if mine is None or theirs is None or theirs > mine:
                yield f"{'/'.join(own)}:{line} imports {'.'.join(target)}"
            elif mine == theirs and mine != 0:
                yield f"{'/'.join(own)}:{line} imports its sibling {target[0]}"
            elif mine == 0 and CORE_ORDER.get(target[0], 3) > CORE_ORDER.get(own[0], 3):
                yield f"{'/'.join(own)}:{line} imports {'.'.join(target)} (up)"


def test_imports_only_go_down_a_floor():
    assert list(_violations()) == []


def _graph():
    """Module -> modules of the package it imports (lazy imports included)."""
    graph = {}
    for path in sorted(PACKAGE.rglob("*.py")):
        parts = path.relative_to(PACKAGE).with_suffix("").parts
        name = ".".join(p for p in parts if p != "__init__")
        targets = set()
        for target, _ in _imports(path):
            dotted = ".".join(target)
            # "from .x import y" may name a module x.y or a name in x
            for candidate in (dotted, dotted.rsplit(".", 1)[0]):
                if (PACKAGE / candidate.replace(".", "/")).with_suffix(
                    ".py"
                ).exists() or (
                    PACKAGE / candidate.replace(".", "/") / "__init__.py"
                ).exists():
                    targets.add(candidate)
                    break
        graph[name] = targets - {name}
    return graph


def _cycle(graph):
    """One import circle among the package's modules, or None."""
    state = {}

    def visit(node, path):
        state[node] = "open"
        for nxt in sorted(graph.get(node, ())):
            if state.get(nxt) == "open":
                return path + [nxt]
            if nxt not in state:
                found = visit(nxt, path + [nxt])
                if found:
                    return found
        state[node] = "done"
        return None

    for node in sorted(graph):
        if node not in state:
            found = visit(node, [node])
            if found:
                return found
    return None


def test_no_import_circle():
    """No module imports one that (through others) imports it back; a
    package's __init__ re-exporting its own modules is not a circle."""
    graph = {
        name: {t for t in targets if not name.startswith(t + ".") and t != ""}
        for name, targets in _graph().items()
    }
    assert _cycle(graph) is None
    assert _cycle({"a": {"b"}, "b": {"c"}, "c": {"a"}}) == ["a", "b", "c", "a"]


def test_the_floor_check_sees_an_import_that_goes_up(tmp_path, monkeypatch):
    """The check above can fail: a core module importing the app is caught."""
    fake = PACKAGE / "functional" / "_probe_up.py"
    fake.write_text("from ..app import cli  # noqa\n")
    try:
        assert any("_probe_up" in v for v in _violations())
    finally:
        fake.unlink()


def _caller_file(call):
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        call()
    mine = [w for w in caught if "training mode" in str(w.message)]
    return mine


@pytest.mark.parametrize("cls", [LayerSFAM, LayerCGRAM], ids=["forward", "gradient"])
@pytest.mark.parametrize("closure", [False, True], ids=["module", "closure"])
def test_warnings_point_at_the_callers_line_once_per_call(cls, closure):
    """A model left in train mode warns once per call (queries and support
    run in separate passes), located at this file, not in the library."""
    model = TinyCNN()  # train mode: BatchNorm uses batch statistics
    forward = (lambda x: model(x)) if closure else model
    method = cls(forward, model.features, metric="cosine")
    q, s = images(2, 3, 8, 8), images(2, 3, 8, 8, seed=1)
    caught = _caller_file(lambda: method.attribute(q, s))
    assert len(caught) == 1
    assert caught[0].filename == __file__


def test_a_warning_outside_a_call_points_at_the_caller():
    """The classifier-head warning of a constructor: at this file too."""
    net = torch.nn.Sequential(torch.nn.Conv2d(3, 4, 3), torch.nn.Flatten())
    net.fc = torch.nn.Linear(4, 1000)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        LayerCGRAM(net, net[0])
    heads = [w for w in caught if "classifier head" in str(w.message)]
    assert len(heads) == 1 and heads[0].filename == __file__
