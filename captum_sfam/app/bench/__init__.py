r"""Benchmark of every pair-attribution method, with ground truth, offline.

    python -m captum_sfam.app.bench [--episodes 100] [--pairs 100] [--scenes 40]
                                    [--photo-pairs 20] [--pck-photos 5]
                                    [--out bench-results] [--seed 0] [--quick]
    captum-sfam bench ...

Four settings (the last numbers: docs/benchmarks):

(a) Euclidean few-shot: the prototypical network of :mod:`captum_sfam.demo.trained`
    on 5-way 1-shot episodes of the synthetic test classes; each episode's
    query is explained against the support of the class the model predicts.
(b) Cosine retrieval: the multi-similarity model; each query of the synthetic
    test set is explained against its top-1 gallery image.
(c) The ImageNet EfficientNet-Lite0 (offline) on two-object composites of
    scikit-image photos, each explained against a second view of one object.
(d) Correspondences: the same network on scikit-image photos paired with
    their mirrored, cropped and rescaled copies (geometry known by
    construction); PCK at one cell of every forward-only member's
    ``point_to_point``, in each reading.

Every pair of (a)-(c) also has a contrast: (a) the runner-up class, (b) the
rank-2 gallery image, (c) the other object. Each method that takes
``contrast=`` gets a second row, "<method> (contrast)", whose maps explain
"why the support and not the contrast" (Captum's LayerGradCam through a
:class:`~captum_sfam.SimilarityTarget` with ``contrast_support``), and every
row is also scored by contrastive deletion/insertion of the margin
:math:`s(q, S) - s(q, S')`.

Methods: the family (SFAM, similarity Grad-CAM, CG-RAM, Grad-FAM, RAM,
Decomposition for cosine) plus Captum's LayerGradCam and IntegratedGradients
through :class:`~captum_sfam.SimilarityTarget`. Metrics (``captum_sfam.metrics``):
localisation IoU and accuracy at IoU >= 0.5 over correctly decided samples
(threshold 0.2, the paper's protocol), pointing game, pair specificity and
shift on two-object scenes (for contrast rows: the support of one object with
the other as contrast), deletion / insertion AUC of the pair similarity and of
the margin over the contrast (lower / higher is better), PCK (d). No method is
tuned on these numbers.

The modules, in the order a run goes through them: :mod:`.settings` builds
each setting's model, pairs and scenes; :mod:`.explainers` turns every method
into a map function; :mod:`.measures` scores the maps; :mod:`.tables` writes
the tables and files; :mod:`.command` runs it all from the command line.
"""

from .command import add_arguments, main, main_args, run
from .explainers import CONTRAST, contrast_explainers, explainers
from .measures import COLUMNS, Tally, correspondence_setting, evaluate, margin_fn
from .settings import CHOICES, SETTINGS, Setting
from .tables import format_table, write

__all__ = [
    "CHOICES",
    "COLUMNS",
    "CONTRAST",
    "SETTINGS",
    "Setting",
    "Tally",
    "add_arguments",
    "contrast_explainers",
    "correspondence_setting",
    "evaluate",
    "explainers",
    "format_table",
    "main",
    "main_args",
    "margin_fn",
    "run",
    "write",
]
