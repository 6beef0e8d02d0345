r"""Two small metric-learning models trained on :mod:`captum_sfam.demo.synthetic`.

- :func:`protonet`: a Euclidean prototypical network (Snell et al. 2017), the
  FRN setting of the SFAM paper: a 4-block CNN with LeakyReLU(0.1) (negative
  activations, as FRN's ResNet-12), embedding = global average pooling of
  ``model.features`` (128 x 8 x 8 at 64 px), decision = negative squared
  Euclidean distance to class prototypes. Trained episodically (5-way 5-shot).
- :func:`cosine_embedder`: the GPW / multi-similarity setting: the same kind
  of backbone with ReLU, pooled, a linear head (128 -> 64) and L2
  normalisation, trained with the multi-similarity loss (Wang et al., CVPR
  2019); decision = cosine similarity.

Both train in a minute or two on 2 CPU cores, on the *train* classes only.
The default models (200 steps, seed 0) ship trained with the package
(``captum_sfam/demo/weights/*.safetensors``, made by this training code), so
they load offline without training; other settings train once and are
cached in ``$CAPTUM_SFAM_CACHE`` (default ``~/.cache/captum_sfam``).
"""

from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path
from typing import Callable, Dict, Optional, Tuple

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from .._optional import require_extra
from ..metrics.retrieval import nearest_neighbours, recall_at_k
from ..similarity import embed, similarity_matrix
from .synthetic import ShapesFewShot

#: images embedded per forward pass when evaluating
EMBED_BATCH = 256
#: the default models' weights, shipped with the package
SHIPPED = Path(__file__).resolve().parent / "weights"


def cache_dir() -> Path:
    root = os.environ.get("CAPTUM_SFAM_CACHE")
    if root:
        return Path(root)
    xdg = os.environ.get("XDG_CACHE_HOME")
    return (Path(xdg) if xdg else Path.home() / ".cache") / "captum_sfam"


class ConvBackbone(nn.Module):
    """4 conv blocks (3 with 2x2 max-pooling); ``features`` is the last block."""

    def __init__(self, negative_slope: float = 0.0, widths=(32, 64, 96, 128)) -> None:
        super().__init__()

        def act() -> nn.Module:
            return nn.LeakyReLU(negative_slope) if negative_slope else nn.ReLU()

        layers = []
        channels = 3
        for width in widths[:-1]:
            layers += [
                nn.Conv2d(channels, width, 3, padding=1, bias=False),
                nn.BatchNorm2d(width),
                act(),
                nn.MaxPool2d(2),
            ]
            channels = width
        self.stem = nn.Sequential(*layers)
        self.features = nn.Sequential(
            nn.Conv2d(channels, widths[-1], 3, padding=1, bias=False),
            nn.BatchNorm2d(widths[-1]),
            act(),
        )

    def forward(self, x: Tensor) -> Tensor:
        return self.features(self.stem(x))


class ProtoNet(nn.Module):
    """Embedding = GAP of the backbone's last block (Euclidean metric)."""

    metric = "euclidean"

    def __init__(self) -> None:
        super().__init__()
        self.backbone = ConvBackbone(negative_slope=0.1)

    @property
    def layer(self) -> nn.Module:
        return self.backbone.features

    def forward(self, x: Tensor) -> Tensor:
        return self.backbone(x).mean(dim=(2, 3))


class CosineEmbedder(nn.Module):
    """GAP -> linear head -> L2 normalisation (cosine metric)."""

    metric = "cosine"

    def __init__(self, dim: int = 64) -> None:
        super().__init__()
        self.backbone = ConvBackbone(negative_slope=0.0)
        self.head = nn.Linear(128, dim)

    @property
    def layer(self) -> nn.Module:
        return self.backbone.features

    def forward(self, x: Tensor) -> Tensor:
        pooled = self.backbone(x).mean(dim=(2, 3))
        return F.normalize(self.head(pooled), dim=-1)


def _batch(data: ShapesFewShot, indices) -> Tensor:
    if len(indices) == 0:
        return torch.empty(0, 3, data.size, data.size)
    return torch.stack([data[int(i)][0] for i in indices])


def _episode(
    data: ShapesFewShot, gen: torch.Generator, ways: int, shots: int, queries: int
):
    classes = torch.randperm(len(data.classes), generator=gen)[:ways]
    support, query = [], []
    for c in classes.tolist():
        picks = torch.randperm(data.images_per_class, generator=gen)[: shots + queries]
        ids = [data.images_of(c)[int(p)] for p in picks]
        support += ids[:shots]
        query += ids[shots:]
    return _batch(data, support), _batch(data, query)


def multi_similarity_loss(
    emb: Tensor,
    labels: Tensor,
    alpha: float = 2.0,
    beta: float = 50.0,
    base: float = 0.5,
    margin: float = 0.1,
) -> Tensor:
    """Multi-similarity loss with hard-pair mining (Wang et al., CVPR 2019)."""
    sim = emb @ emb.t()
    same = labels[:, None] == labels[None, :]
    eye = torch.eye(len(labels), dtype=torch.bool)
    losses = []
    for i in range(len(labels)):
        pos = sim[i][same[i] & ~eye[i]]
        neg = sim[i][~same[i]]
        if len(pos) == 0 or len(neg) == 0:
            continue
        neg = neg[neg + margin > pos.min()]
        pos = pos[pos - margin < sim[i][~same[i]].max()]
        if len(neg) == 0 or len(pos) == 0:
            continue
        pos_loss = torch.log1p(torch.exp(-alpha * (pos - base)).sum()) / alpha
        neg_loss = torch.log1p(torch.exp(beta * (neg - base)).sum()) / beta
        losses.append(pos_loss + neg_loss)
    return torch.stack(losses).mean() if losses else sim.sum() * 0


def _train(kind: str, steps: int, seed: int, images_per_class: int) -> nn.Module:
    torch.manual_seed(seed)
    gen = torch.Generator().manual_seed(seed)
    data = ShapesFewShot("train", images_per_class=images_per_class, seed=seed)
    model: nn.Module = ProtoNet() if kind == "protonet" else CosineEmbedder()
    optimizer = torch.optim.Adam(model.parameters(), lr=2e-3)
    schedule = torch.optim.lr_scheduler.CosineAnnealingLR(optimizer, max(steps, 1))
    model.train()
    for _ in range(steps):
        if kind == "protonet":
            ways, shots, queries = 10, 5, 5
            support, query = _episode(data, gen, ways, shots, queries)
            emb = model(torch.cat([support, query]))
            protos = emb[: ways * shots].reshape(ways, shots, -1).mean(1)
            logits = -(torch.cdist(emb[ways * shots :], protos) ** 2)
            target = torch.arange(ways).repeat_interleave(queries)
            loss = F.cross_entropy(logits, target)
        else:
            ways, per = 16, 4
            support, _ = _episode(data, gen, ways, per, 0)
            labels = torch.arange(ways).repeat_interleave(per)
            loss = multi_similarity_loss(model(support), labels)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        schedule.step()
    return model.eval()


def config_key(config: Dict[str, object]) -> str:
    """12 hex digits naming a training configuration (files of its weights)."""
    return hashlib.sha1(json.dumps(config, sort_keys=True).encode()).hexdigest()[:12]


def shipped_cached_or_trained(
    model: nn.Module, name: str, train: Callable[[], nn.Module], retrain: bool
) -> nn.Module:
    """``model`` (in eval mode) with the weights that ship with the package
    (``SHIPPED/name.safetensors``), else those cached in
    ``cache_dir()/name.pt``, else the model ``train()`` returns, cached
    atomically; ``retrain`` skips both files."""
    shipped = SHIPPED / f"{name}.safetensors"
    cached = cache_dir() / f"{name}.pt"
    if shipped.is_file() and not retrain:  # the default models ship trained
        require_extra("safetensors", "safetensors")
        from safetensors.torch import load_file

        model.load_state_dict(load_file(shipped))
        return model.eval()
    if cached.is_file() and not retrain:
        model.load_state_dict(torch.load(cached, map_location="cpu", weights_only=True))
        return model.eval()
    model = train()
    cached.parent.mkdir(parents=True, exist_ok=True)
    tmp = cached.with_suffix(".tmp")
    torch.save(model.state_dict(), tmp)
    tmp.replace(cached)
    return model


def _load_or_train(
    kind: str, steps: int, seed: int, images_per_class: int, retrain: bool
):
    config = {
        "kind": kind,
        "steps": steps,
        "seed": seed,
        "ipc": images_per_class,
        "v": 1,
    }
    model = ProtoNet() if kind == "protonet" else CosineEmbedder()
    return shipped_cached_or_trained(
        model,
        f"{kind}-{config_key(config)}",
        lambda: _train(kind, steps, seed, images_per_class),
        retrain,
    )


def protonet(steps: int = 200, seed: int = 0, retrain: bool = False) -> ProtoNet:
    """The Euclidean prototypical network (trained once, then cached)."""
    return _load_or_train("protonet", steps, seed, 40, retrain)


def cosine_embedder(
    steps: int = 200, seed: int = 0, retrain: bool = False
) -> CosineEmbedder:
    """The cosine embedding model trained with the multi-similarity loss (cached)."""
    return _load_or_train("cosine", steps, seed, 40, retrain)


@torch.no_grad()
def fewshot_accuracy(
    model: nn.Module,
    episodes: int = 200,
    ways: int = 5,
    shots: int = 1,
    queries: int = 5,
    seed: int = 1,
    data: Optional[ShapesFewShot] = None,
) -> float:
    """N-way K-shot accuracy on the test classes (nearest prototype, model metric)."""
    data = data or ShapesFewShot("test", seed=0)
    gen = torch.Generator().manual_seed(seed)
    correct = total = 0
    for _ in range(episodes):
        support, query = _episode(data, gen, ways, shots, queries)
        emb_s, emb_q = model(support), model(query)
        protos = emb_s.reshape(ways, shots, -1).mean(1)
        metric = getattr(model, "metric", "euclidean")
        scores = similarity_matrix(emb_q, protos, metric)
        target = torch.arange(ways).repeat_interleave(queries)
        correct += int((scores.argmax(1) == target).sum())
        total += len(target)
    return correct / total


@torch.no_grad()
def retrieval_recall_at_1(
    model: nn.Module, images_per_class: int = 10, seed: int = 0
) -> Tuple[float, Dict[str, Tensor]]:
    """Recall@1 on the test classes: each image queries all the others."""
    data = ShapesFewShot("test", images_per_class=images_per_class, seed=seed)
    images = torch.stack([data[i][0] for i in range(len(data))])
    labels = torch.tensor([data.label(i) for i in range(len(data))])
    emb = torch.cat([embed(model, chunk) for chunk in images.split(EMBED_BATCH)])
    metric = getattr(model, "metric", "cosine")
    nearest = nearest_neighbours(emb, metric)[:, 0]
    return recall_at_k(emb, labels, metric), {"nearest": nearest, "labels": labels}
