"""Sphinx configuration of the captum-sfam documentation site.

Build (from the repository root, warnings as errors, nitpicky references):

    sphinx-build -n -W --keep-going -b html docs docs/_build/html

The tutorials are rendered with the outputs their notebooks store; the docs
build never executes them. CI executes them once, with ``pytest --nbmake
--overwrite`` on a copy, and builds with ``SFAM_TUTORIALS`` pointing at it.
"""

from __future__ import annotations

import builtins
import importlib
import importlib.util
import inspect
import os
import shutil
import sys
from pathlib import Path

from sphinx.pycode import ModuleAnalyzer
from sphinx.util.nodes import make_refnode

import captum_sfam

DOCS = Path(__file__).resolve().parent
ROOT = DOCS.parent

project = "captum-sfam"
author = "captum-sfam developers"
copyright = "captum-sfam developers"
release = captum_sfam.__version__
version = release

extensions = [
    "sphinx.ext.autodoc",
    "sphinx.ext.autosummary",
    "sphinx.ext.napoleon",
    "sphinx.ext.mathjax",
    "myst_nb",
]

# --- sources ---------------------------------------------------------------
source_suffix = {".rst": "restructuredtext", ".md": "myst-nb", ".ipynb": "myst-nb"}
root_doc = "index"
exclude_patterns = [
    "_build",
    "tools",
    "Thumbs.db",
    ".DS_Store",
    "**.ipynb_checkpoints",
    "jupyter_execute",
]

# --- MyST and notebooks ------------------------------------------------------
myst_enable_extensions = ["dollarmath", "amsmath", "colon_fence", "deflist"]
myst_heading_anchors = 3
# notebooks are rendered with the outputs they carry; CI writes those outputs
# with `pytest --nbmake --overwrite tutorials` before the build
nb_execution_mode = "off"
nb_execution_raise_on_error = True
nb_merge_streams = True
# library warnings a kernel printed (tqdm's "IProgress not found") are noise
# on a rendered page; nbmake still fails CI on a cell that raises
nb_output_stderr = "remove"

# --- autodoc ------------------------------------------------------------------
autodoc_member_order = "bysource"
autodoc_typehints = "signature"
autodoc_preserve_defaults = True
autosummary_generate = False
napoleon_google_docstring = True
napoleon_numpy_docstring = False
napoleon_use_rtype = False
# parameter types stay text ("Tensor or tuple[Tensor, ...], optional"), as
# in Captum's docstrings; the signatures link the annotated types
napoleon_use_param = False

# broken cross-references are errors (-n -W); see resolve_reference below for
# how names are looked up
nitpicky = True

# --- HTML -----------------------------------------------------------------------
html_theme = "furo"
html_title = f"captum-sfam {release}"
html_static_path = ["_static"]
html_show_sourcelink = False

# MathJax: a copy under _static/mathjax (docs/tools/fetch_mathjax.sh, from the
# npm registry, git-ignored) renders the maths offline; without it the pages
# load MathJax 3 from its CDN (Sphinx's default).
if (DOCS / "_static" / "mathjax" / "tex-chtml.js").is_file():
    mathjax_path = "mathjax/tex-chtml.js"


# --- build-time pages ---------------------------------------------------------
def copy_tutorials() -> None:
    """Copy the tutorials into tutorials/notebooks/ (git-ignored).

    From ``$SFAM_TUTORIALS`` when set (.ci/run points it at the copy that
    ``pytest --nbmake --overwrite`` executed, so the checkout's notebooks stay
    as committed), else from the repository's ``tutorials/``.
    """
    source = Path(os.environ.get("SFAM_TUTORIALS") or ROOT / "tutorials")
    out = DOCS / "tutorials" / "notebooks"
    if out.exists():
        shutil.rmtree(out)
    out.mkdir(parents=True)
    for nb in sorted(source.glob("*.ipynb")):
        shutil.copy2(nb, out / nb.name)


def generate_benchmarks() -> None:
    """Benchmark pages from benchmarks/results/*.json (docs/benchmarks/generate.py)."""
    script = DOCS / "benchmarks" / "generate.py"
    if not script.is_file():
        return
    spec = importlib.util.spec_from_file_location("_benchmark_pages", script)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    module.generate(DOCS / "benchmarks" / "generated")


copy_tutorials()
generate_benchmarks()


# --- cross-references -----------------------------------------------------------
#: where a bare or abbreviated type name of a docstring or annotation lives
_ALIASES = {"np": "numpy", "Tensor": "torch.Tensor", "Module": "torch.nn.Module"}


def _import(path: str):
    """The Python object named by a dotted path, or None."""
    head, _, rest = path.partition(".")
    if head in _ALIASES:
        path = _ALIASES[head] + ("." + rest if rest else "")
    parts = path.split(".")
    for i in range(len(parts), 0, -1):
        try:
            obj = importlib.import_module(".".join(parts[:i]))
        except Exception:
            continue
        try:
            for attr in parts[i:]:
                obj = getattr(obj, attr)
        except AttributeError:
            return None
        return obj
    if len(parts) == 1 and hasattr(builtins, path):
        return getattr(builtins, path)
    return None


_MISSING = object()


def _candidates(target: str, module: str | None, cls: str | None) -> list[str]:
    if target.startswith("."):
        target = target.lstrip(".")
        out = []
        if module:
            pieces = module.split(".")
            for i in range(len(pieces), 0, -1):
                out.append(".".join(pieces[:i] + [target]))
        return out
    out = [target]
    if module:
        if cls:
            out.insert(0, f"{module}.{cls}.{target}")
        out.insert(1 if cls else 0, f"{module}.{target}")
    return out


def resolve_reference(app, env, node, contnode):
    """Resolve Python references Sphinx cannot find by itself.

    1. a name that imports to an object documented under another path (the
       docstrings say ``captum_sfam.LayerSFAM``; the reference documents it
       as ``captum_sfam.methods.LayerSFAM``) links there;
    2. a bare name that ends exactly one documented object's path links there;
    3. a name that imports to a real object that the site does not document
       (``torch.Tensor``, ``int``, a private helper) is shown as code, unlinked.

    Anything else (a misspelt or removed name) stays a warning, which ``-W``
    turns into a failed build.
    """
    if node.get("refdomain") != "py":
        return None
    target = node["reftarget"]
    domain = env.get_domain("py")
    documented = domain.objects
    by_id = env.temp_data.setdefault("_sfam_by_id", None)
    if by_id is None or len(by_id[0]) != len(documented):
        ids = {}
        for name in documented:
            obj = _import(name)
            if obj is not None:
                ids.setdefault(id(obj), name)
        by_id = (dict(documented), ids)
        env.temp_data["_sfam_by_id"] = by_id
    ids = by_id[1]

    def link(name):
        entry = documented[name]
        return make_refnode(
            app.builder, node["refdoc"], entry.docname, entry.node_id, contnode, name
        )

    found = None
    for cand in _candidates(target, node.get("py:module"), node.get("py:class")):
        obj = _import(cand)
        if obj is not None:
            found = obj
            break
    if found is not None and id(found) in ids and not isinstance(found, (int, float)):
        return link(ids[id(found)])
    bare = target.lstrip(".~")
    ends = [n for n in documented if n == bare or n.endswith("." + bare)]
    if len(ends) == 1:
        return link(ends[0])
    if found is not None:
        return contnode
    return None


def dataclass_defaults(app, what, name, obj, options, signature, return_annotation):
    """Show a dataclass field's ``default_factory`` default as ``...``.

    ``inspect`` writes it ``<factory>``, which is no Python: Sphinx then
    cannot parse the signature and splits its annotations at every comma.
    """
    if signature and "<factory>" in signature:
        return signature.replace("<factory>", "..."), return_annotation
    return None


def data_doc_comment(app, what, name, obj, options, lines):
    """A re-exported constant shows the ``#:`` comment where it is defined.

    autodoc reads ``#:`` comments in the module it documents the name under;
    ``captum_sfam.methods.READINGS`` is defined (and commented) in another
    module, so autodoc would show the docstring of ``tuple`` instead.
    """
    if what != "data" or obj is None:
        return
    own = inspect.getdoc(type(obj)) or ""
    if lines and "\n".join(lines).strip() != own.strip():
        return
    for modname, module in sorted(sys.modules.items()):
        if not modname.startswith("captum_sfam") or module is None:
            continue
        try:
            docs = ModuleAnalyzer.for_module(modname).find_attr_docs()
        except Exception:
            continue
        for (namespace, attr), comment in docs.items():
            if namespace == "" and getattr(module, attr, None) is obj:
                lines[:] = list(comment)
                return
    lines[:] = []


def setup(app):
    app.connect("autodoc-process-docstring", data_doc_comment)
    app.connect("missing-reference", resolve_reference)
    app.connect("autodoc-process-signature", dataclass_defaults)
