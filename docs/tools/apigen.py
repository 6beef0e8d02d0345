"""Write the API reference pages under docs/api/ from the package's ``__all__``.

Run ``python docs/tools/apigen.py`` after adding or removing a public name;
``tests/test_docs.py`` fails until the pages list every name. Each object is
documented once, on the page of the area that defines it; the other pages
that re-export it link there.
"""

from __future__ import annotations

import importlib
import inspect
from pathlib import Path

API = Path(__file__).resolve().parent.parent / "api"

#: (module, title, one-line summary); the order decides where a re-exported
#: name that no area defines (a constant, a type alias) is documented
AREAS = [
    ("captum_sfam.methods", "Methods", "the family of pair attributions"),
    ("captum_sfam.methods.multiblock", "Multi-block", "maps read at several blocks"),
    ("captum_sfam.image_text", "Image–text", "two-tower models, both sides"),
    ("captum_sfam.functional", "Functional", "the pure maths, on tensors"),
    ("captum_sfam.similarity", "Similarity", "embeddings, similarity, Captum adapter"),
    ("captum_sfam.metrics", "Metrics", "evaluation of maps and pairs"),
    ("captum_sfam.retrieval", "Retrieval", "explained retrieval runs on disk"),
    ("captum_sfam.visualization", "Visualization", "figures of pairs and maps"),
    ("captum_sfam.images", "Images", "reading and showing images"),
    ("captum_sfam.transforms", "Transforms", "token grids and upsampling"),
]

#: the methods a member class shows, as it has them
MEMBER_METHODS = [
    "attribute",
    "attribute_pairs",
    "channel_weights",
    "point_to_point",
    "point_map",
]


def public_names(module) -> list[str]:
    names = getattr(module, "__all__", None)
    if names is not None:
        return list(names)
    return [
        n
        for n, o in vars(module).items()
        if not n.startswith("_") and getattr(o, "__module__", None) == module.__name__
    ]


def home_of(obj, name: str) -> str | None:
    """The area that defines ``obj``, or None (decided by the order of AREAS)."""
    mod = getattr(obj, "__module__", None)
    if not isinstance(obj, type) and not inspect.isfunction(obj):
        return None
    best = None
    for area, _, _ in AREAS:
        if mod == area or (mod or "").startswith(area + "."):
            if best is None or len(area) > len(best):
                best = area
    return best


def canonical() -> dict[int, str]:
    """id(object) -> fully qualified name where it is documented."""
    where: dict[int, str] = {}
    for area, _, _ in AREAS:
        module = importlib.import_module(area)
        for name in public_names(module):
            obj = getattr(module, name)
            home = home_of(obj, name)
            if home == area or (home is None and id(obj) not in where):
                where.setdefault(id(obj), f"{area}.{name}")
    return where


def directive(module, name: str) -> list[str]:
    obj = getattr(module, name)
    full = f"{module.__name__}.{name}"
    if inspect.isclass(obj):
        from captum_sfam.methods import REGISTRY

        if obj in {m.cls for m in REGISTRY.values()}:
            members = [m for m in MEMBER_METHODS if hasattr(obj, m)]
            return [
                f".. autoclass:: {full}",
                f"   :members: {', '.join(members)}",
                "   :show-inheritance:",
            ]
        return [f".. autoclass:: {full}", "   :members:", "   :show-inheritance:"]
    if inspect.isfunction(obj):
        return [f".. autofunction:: {full}"]
    return [f".. autodata:: {full}", "   :no-value:"]


def _head(heading: str, module: str) -> list[str]:
    """The opening lines of a generated page: notice, title, automodule."""
    return [
        ".. This page is written by docs/tools/apigen.py; edit that, not this.",
        "",
        heading,
        "=" * len(heading),
        "",
        f".. automodule:: {module}",
        "   :no-members:",
        "",
    ]


def area_page(area: str, title: str, summary: str, where: dict[int, str]) -> str:
    module = importlib.import_module(area)
    names = public_names(module)
    home = {n: where[id(getattr(module, n))] for n in names}  # documented at
    lines = _head(f"``{area}``: {summary}", area) + [".. autosummary::", ""]
    for n in names:
        lines.append(f"   {n}" if home[n] == f"{area}.{n}" else f"   ~{home[n]}")
    lines.append("")
    elsewhere = [n for n in names if home[n] != f"{area}.{n}"]
    if elsewhere:
        lines += [
            "Also exported here, documented where they are defined: "
            + ", ".join(f":py:obj:`{n} <{home[n]}>`" for n in elsewhere)
            + ".",
            "",
        ]
    for n in names:
        if home[n] == f"{area}.{n}":
            lines += directive(module, n) + [""]
    return "\n".join(lines)


def top_page(where: dict[int, str]) -> str:
    import captum_sfam

    lines = _head("``captum_sfam``: the names at the top", "captum_sfam") + [
        "Every name in ``captum_sfam.__all__``, with the page that documents it.",
        "",
        ".. list-table::",
        "   :header-rows: 1",
        "",
        "   * - ``captum_sfam.``",
        "     - documented as",
    ]
    for n in captum_sfam.__all__:
        target = where[id(getattr(captum_sfam, n))]
        lines += [f"   * - ``{n}``", f"     - :py:obj:`{target}`"]
    return "\n".join(lines) + "\n"


def pages() -> dict[str, str]:
    where = canonical()
    out = {"captum_sfam.rst": top_page(where)}
    for area, title, summary in AREAS:
        out[area.split(".")[-1] + ".rst"] = area_page(area, title, summary, where)
    toc = [
        "# API reference",
        "",
        "One page per public area. Each object is documented once, on the page of",
        "the area that defines it; `captum_sfam` at the top re-exports the family",
        "and the most used helpers.",
        "",
        "```{toctree}",
        ":maxdepth: 1",
        "",
        "captum_sfam",
        *[a.split(".")[-1] for a, _, _ in AREAS],
        "```",
        "",
    ]
    out["index.md"] = "\n".join(toc)
    return out


def main() -> None:
    API.mkdir(exist_ok=True)
    for name, text in pages().items():
        (API / name).write_text(text)
        print("wrote", API / name)


if __name__ == "__main__":
    main()
