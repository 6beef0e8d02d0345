r"""Explain a whole retrieval run, on one machine or many.

:func:`explain_retrieval` finds every query's exact top-k in a gallery and
explains each (query, neighbour) pair with a member of the pair-attribution
family, streaming ``results.jsonl``, float16 maps (safetensors shards) and a
static ``index.html`` report to a directory; a rerun resumes; under
``torchrun`` the work is split over the processes. :func:`read_results` and
:func:`load_maps` read a run back. The command line is
``captum-sfam retrieve QUERIES GALLERY --top-k K --out DIR``.

Needs the ``demo`` extra (safetensors, pillow, numpy).
"""

from .data import ImageFiles, ImageSource
from .distributed import Context, current_context, init_distributed
from .metrics import average_precision_at_k, mean_retrieval_metrics
from .report import write_report
from .run import RetrievalRun, exact_top_k, explain_retrieval, supports_contrast
from .store import MAP_DTYPE, load_maps, read_results

__all__ = [
    "Context",
    "ImageFiles",
    "ImageSource",
    "MAP_DTYPE",
    "RetrievalRun",
    "average_precision_at_k",
    "current_context",
    "exact_top_k",
    "explain_retrieval",
    "init_distributed",
    "load_maps",
    "mean_retrieval_metrics",
    "read_results",
    "supports_contrast",
    "write_report",
]
