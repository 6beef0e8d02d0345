"""Alias of :mod:`captum_sfam.app.bench`: ``python -m captum_sfam.bench`` still runs."""

import importlib
import sys

_bench = importlib.import_module("captum_sfam.app.bench")
if __name__ == "__main__":
    sys.exit(_bench.main())
sys.modules[__name__] = _bench
