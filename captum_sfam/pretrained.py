"""Alias of :mod:`captum_sfam.demo.pretrained`, kept so that earlier code runs."""

import importlib
import sys

sys.modules[__name__] = importlib.import_module("captum_sfam.demo.pretrained")
