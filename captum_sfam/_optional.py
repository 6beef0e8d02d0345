r"""Optional dependencies: one check for every part that needs an extra.

The core needs torch and captum only; the command line, the demo assets, the
retrieval run's storage and report, and the metrics need the extras declared
in ``pyproject.toml``. A part used without its extra raises an
``ImportError`` that names the extra to install.
"""

from __future__ import annotations

import importlib.util


def require_extra(module: str, package: str, extra: str = "demo") -> None:
    """``ImportError`` naming ``pip install 'captum-sfam[extra]'`` unless
    ``module`` can be imported (``package`` is its name on PyPI)."""
    if importlib.util.find_spec(module) is None:
        raise ImportError(
            f"{package} is needed for this: pip install 'captum-sfam[{extra}]'"
        )
