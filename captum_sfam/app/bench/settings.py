r"""The benchmark's settings: models, decided pairs and two-object scenes.

(a) :func:`fewshot_setting`, (b) :func:`retrieval_setting` and (c)
:func:`photo_setting` each build a :class:`Setting`; (d)
:func:`correspondence_photos` gives the photos of the correspondence setting.
Everything is offline and drawn from ``args.seed``.
"""

from __future__ import annotations

import argparse
from dataclasses import dataclass
from typing import Any, Callable, Dict, List, Tuple

import torch
from torch import Tensor
from torch.nn import Module

from ...metrics.retrieval import nearest_neighbours, recall_at_k
from ...similarity import embed, similarity_matrix
from .measures import Pair, Scene

#: images embedded per forward pass
EMBED_BATCH = 256
#: (a) N-way 1-shot episodes
WAYS = 5
#: the scikit-image photos of (c) and (d), in order
PHOTOS = ["cat", "coffee", "astronaut", "rocket", "motorcycle_left"]


@dataclass
class Setting:
    r"""One of the settings (a)-(c), ready for
    :func:`~captum_sfam.app.bench.measures.evaluate`.

    Attributes:
        model (Module): the embedding model, in eval mode.
        layer (Module): the explained layer.
        metric (str): ``"cosine"`` or ``"euclidean"``.
        pairs (list): the decided pairs (query, support, contrast, box, correct).
        scenes (list): the two-object scenes (scene, support A, support B,
                    box A, box B).
        info (dict): what the model scores on the setting (for the report).
        title (str): the title of the setting's table.
        steps (int): deletion / insertion steps.
        ig_steps (int): IntegratedGradients' steps. Default: 32
    """

    model: Module
    layer: Module
    metric: str
    pairs: List[Pair]
    scenes: List[Scene]
    info: Dict[str, Any]
    title: str
    steps: int
    ig_steps: int = 32


def _scenes(two: Any, data: Any) -> List[Scene]:
    """The scenes of a ``TwoObjectScenes``, each object's support drawn from
    ``data``."""
    out = []
    for i in range(len(two)):
        scene, (a, b), (box_a, box_b) = two[i]
        sa = data[data.images_of(a)[i % data.images_per_class]][0]
        sb = data[data.images_of(b)[i % data.images_per_class]][0]
        out.append((scene[None], sa[None], sb[None], box_a, box_b))
    return out


def _episode(data: Any, model: Module, gen: torch.Generator) -> Pair:
    """One 5-way 1-shot episode, decided by ``model``: the query against the
    predicted class's shot, the runner-up's shot as the contrast."""
    pool = data.images_per_class // 2  # shots from the first half, queries after
    classes = torch.randperm(len(data.classes), generator=gen)[:WAYS].tolist()
    shots = [
        data.images_of(c)[int(torch.randint(0, pool, (1,), generator=gen))]
        for c in classes
    ]
    truth = int(torch.randint(0, WAYS, (1,), generator=gen))
    query_id = data.images_of(classes[truth])[
        pool + int(torch.randint(0, pool, (1,), generator=gen))
    ]
    support = torch.stack([data[i][0] for i in shots])
    query, _, box = data[query_id]
    scores = similarity_matrix(
        embed(model, query[None]), embed(model, support), "euclidean"
    )
    predicted, runner_up = scores[0].topk(2).indices.tolist()
    return (
        query[None],
        support[predicted : predicted + 1],
        support[runner_up : runner_up + 1],
        box,
        predicted == truth,
    )


def fewshot_setting(args: argparse.Namespace) -> Setting:
    r"""(a) The Euclidean prototypical network on 5-way 1-shot episodes of the
    synthetic test classes.

    Args:
        args (argparse.Namespace): ``train_steps``, ``seed``, ``episodes``,
                    ``scenes`` and ``steps``.

    Returns:
        the :class:`Setting`; ``info`` holds the 5-way 1-shot accuracy.
    """
    from ...demo.synthetic import ShapesFewShot, TwoObjectScenes
    from ...demo.trained import protonet

    model = protonet(steps=args.train_steps)
    data = ShapesFewShot("test", seed=0)
    gen = torch.Generator().manual_seed(args.seed)
    pairs = [_episode(data, model, gen) for _ in range(args.episodes)]
    scenes = _scenes(TwoObjectScenes(data, args.scenes, seed=args.seed + 7), data)
    accuracy = sum(pair[4] for pair in pairs) / max(len(pairs), 1)
    title = (
        f"(a) Euclidean ProtoNet, 5-way 1-shot, {len(pairs)} episodes (5-way 1-shot "
        f"accuracy {accuracy:.1%}); {len(scenes)} two-object scenes"
    )
    info = {"accuracy_5way_1shot": accuracy}
    return Setting(
        model, model.layer, "euclidean", pairs, scenes, info, title, args.steps
    )


def retrieval_setting(args: argparse.Namespace) -> Setting:
    r"""(b) The cosine multi-similarity model: each query of the synthetic test
    set against its top-1 gallery image, the rank-2 image as the contrast.

    Args:
        args (argparse.Namespace): ``train_steps``, ``seed``, ``pairs``,
                    ``scenes`` and ``steps``.

    Returns:
        the :class:`Setting`; ``info`` holds the Recall@1.
    """
    from ...demo.synthetic import ShapesFewShot, TwoObjectScenes
    from ...demo.trained import cosine_embedder

    model = cosine_embedder(steps=args.train_steps)
    data = ShapesFewShot("test", images_per_class=10, seed=0)
    images = torch.stack([data[i][0] for i in range(len(data))])
    labels = torch.tensor([data.label(i) for i in range(len(data))])
    emb = torch.cat([embed(model, chunk) for chunk in images.split(EMBED_BATCH)])
    metric = getattr(model, "metric", "cosine")
    nearest = nearest_neighbours(emb, metric, k=2)
    recall = recall_at_k(emb, labels, metric)
    gen = torch.Generator().manual_seed(args.seed)
    queries = torch.randperm(len(data), generator=gen)[: args.pairs].tolist()
    pairs = []
    for q in queries:
        _, _, box = data[q]
        hit, second = nearest[q].tolist()  # rank 1 against rank 2
        correct = bool(labels[hit] == labels[q])
        pairs.append(
            (images[q][None], images[hit][None], images[second][None], box, correct)
        )
    scenes = _scenes(TwoObjectScenes(data, args.scenes, seed=args.seed + 11), data)
    title = (
        f"(b) cosine multi-similarity model, top-1 retrieval pairs, {len(pairs)} "
        f"queries (Recall@1 {recall:.1%}); {len(scenes)} scenes"
    )
    info = {"recall_at_1": recall}
    return Setting(model, model.layer, "cosine", pairs, scenes, info, title, args.steps)


def photo_setting(args: argparse.Namespace) -> Setting:
    r"""(c) The ImageNet EfficientNet-Lite0 on two-object composites of the
    scikit-image photos, each explained against a second view of one object
    (the other object's second view is the contrast).

    Args:
        args (argparse.Namespace): ``photo_pairs`` and ``steps``.

    Returns:
        the :class:`Setting` (224 px images: half the deletion steps, at
        least 8, and 16 IntegratedGradients steps).
    """
    from ...demo.pretrained import (
        efficientnet_lite0,
        preprocess,
        sample_images,
        second_view,
        side_by_side,
    )

    model = efficientnet_lite0(embedding=True)
    photos = sample_images()
    pairs, scenes = [], []
    for a in PHOTOS:
        for b in PHOTOS:
            if a == b:
                continue
            composite, (box_a, box_b) = side_by_side(photos[a], photos[b])
            scene = preprocess(composite)
            sa = preprocess(second_view(photos[a]))
            sb = preprocess(second_view(photos[b]))
            scenes.append((scene, sa, sb, box_a, box_b))
            pairs.append((scene, sa, sb, box_a, True))
    pairs, scenes = pairs[: args.photo_pairs], scenes[: args.photo_pairs]
    title = (
        f"(c) ImageNet EfficientNet-Lite0 on {len(scenes)} two-object photo "
        "composites (localisation: the supported object's half)"
    )
    steps = max(8, args.steps // 2)
    return Setting(model, model.bn2, "cosine", pairs, scenes, {}, title, steps, 16)


def correspondence_photos(args: argparse.Namespace) -> Tuple[Module, List[Tensor]]:
    r"""(d) The EfficientNet-Lite0 and the first ``args.pck_photos`` photos of
    :data:`PHOTOS` as its inputs.

    Args:
        args (argparse.Namespace): ``pck_photos``.

    Returns:
        the model (explain ``model.bn2``) and the (1, 3, 224, 224) inputs.
    """
    from ...demo.pretrained import efficientnet_lite0, preprocess, sample_images

    model = efficientnet_lite0(embedding=True)
    photos = sample_images()
    return model, [preprocess(photos[n]) for n in PHOTOS[: args.pck_photos]]


#: the settings :func:`~captum_sfam.app.bench.measures.evaluate` scores
SETTINGS: Dict[str, Callable[[argparse.Namespace], Setting]] = {
    "fewshot": fewshot_setting,
    "retrieval": retrieval_setting,
    "photos": photo_setting,
}
#: their progress-bar labels
LABELS = {
    "fewshot": "(a) few-shot",
    "retrieval": "(b) retrieval",
    "photos": "(c) photos",
}
#: the values of ``--settings``
CHOICES = [*SETTINGS, "correspondence", "part-swap"]


__all__ = [
    "CHOICES",
    "LABELS",
    "PHOTOS",
    "SETTINGS",
    "Setting",
    "correspondence_photos",
    "fewshot_setting",
    "photo_setting",
    "retrieval_setting",
]
