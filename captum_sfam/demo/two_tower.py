r"""A small two-tower image–text model trained on the synthetic scenes.

Captions are generated from the attributes of :mod:`.synthetic`'s objects
(colour, texture, shape): one object reads "a red striped disc", a
two-object scene "a red striped disc and a blue dotted square" (the two
phrases in either order). The model is CLIP in miniature:

- image tower: 4 conv blocks (3 with 2x2 max-pooling; 128 x 8 x 8 at 64 px),
  global average pooling and a linear projection (``model.image``);
- text tower: a word-level vocabulary of the attribute words with
  ``<pad>``, ``<start>`` and ``<end>`` tokens, token + position embeddings,
  a 2-layer transformer encoder, the ``<end>`` token's state projected
  (``model.text``); positions after ``<end>`` are masked, so the
  integrated-gradients baseline (the words replaced by ``<pad>``) keeps the
  pooled position and the mask;
- score: ``logit_scale * cos`` (learned temperature), trained with CLIP's
  symmetric InfoNCE loss on single objects and two-object scenes of the
  *train* classes: 400 steps in 90 s on one CPU thread (the training
  code run again reproduces the shipped weights exactly).

The default model (:data:`STEPS` steps, seed 0) ships trained
(``captum_sfam/demo/weights/two-tower-*.safetensors``, made by this code) and
loads offline before any cache; other settings train once and are cached in
``$CAPTUM_SFAM_CACHE``. :func:`synthetic_two_tower` returns it as a
:class:`~captum_sfam.image_text.TwoTower`.
"""

from __future__ import annotations

import math
import re
from contextlib import contextmanager
from typing import Dict, Iterator, List, Optional, Sequence, Tuple

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from ..image_text.towers import TwoTower
from .synthetic import ObjectClass, ShapesFewShot, TwoObjectScenes, all_classes
from .trained import config_key, shipped_cached_or_trained

#: colour words, in the order of :data:`.synthetic.COLOURS`
COLOUR_WORDS = ("red", "green", "blue", "yellow", "magenta", "cyan", "orange", "white")
#: texture words, in the order of :data:`.synthetic.TEXTURES`
TEXTURE_WORDS = ("solid", "striped", "dotted", "checkered")
#: shape words, :data:`.synthetic.SHAPES`
SHAPE_WORDS = ("disc", "square", "triangle", "cross", "ring", "diamond", "bar", "frame")
#: caption templates (the words of the templates are in the vocabulary)
TEMPLATES = ("{}", "a photo of {}", "an image of {}")
SPECIALS = ("<pad>", "<start>", "<end>", "<unk>")
VOCABULARY = (
    *SPECIALS, "a", "an", "and", "photo", "image", "of",
    *COLOUR_WORDS, *TEXTURE_WORDS, *SHAPE_WORDS,
)  # fmt: skip
PAD, START, END, UNK = range(4)
#: the text tower's context (ids per text)
CONTEXT = 16
#: the image side in pixels
SIZE = 64
#: the default model's training steps
STEPS = 400


def phrase(cls: ObjectClass) -> str:
    """``"a red striped disc"``: the caption of one object."""
    colour, texture = COLOUR_WORDS[cls.colour], TEXTURE_WORDS[cls.texture]
    return f"a {colour} {texture} {SHAPE_WORDS[cls.shape]}"


def phrase_words(cls: ObjectClass) -> Tuple[str, str, str]:
    """The attribute words of one object: colour, texture, shape."""
    return COLOUR_WORDS[cls.colour], TEXTURE_WORDS[cls.texture], SHAPE_WORDS[cls.shape]


def scene_caption(first: ObjectClass, second: ObjectClass) -> str:
    """``"a red striped disc and a blue dotted square"``."""
    return f"{phrase(first)} and {phrase(second)}"


def encode_words(text: str) -> List[int]:
    """``<start>``, one id per word (lower case; unknown words ``<unk>``),
    ``<end>``; not padded, not truncated."""
    index = {w: i for i, w in enumerate(VOCABULARY)}
    words = re.findall(r"[a-z]+", text.lower())
    return [START, *[index.get(w, UNK) for w in words], END]


def decode_word(token: int) -> str:
    return VOCABULARY[token] if 0 <= token < len(VOCABULARY) else "<unk>"


class ImageTower(nn.Module):
    """Images (B, 3, 64, 64) -> (B, D): 4 conv blocks (the first with stride
    2, the next two with 2x2 max-pooling; 96 x 8 x 8 at 64 px), average
    pooling, a linear projection."""

    def __init__(self, dim: int = 64, widths=(16, 32, 64, 96)) -> None:
        super().__init__()
        blocks, channels = [], 3
        for i, width in enumerate(widths):
            layers = [
                nn.Conv2d(channels, width, 3, stride=2 if i == 0 else 1,
                          padding=1, bias=False),
                nn.BatchNorm2d(width),
                nn.ReLU(),
            ]  # fmt: skip
            if 0 < i < len(widths) - 1:
                layers.append(nn.MaxPool2d(2))
            blocks.append(nn.Sequential(*layers))
            channels = width
        self.blocks = nn.ModuleList(blocks)
        self.proj = nn.Linear(channels, dim)

    @property
    def features(self) -> nn.Module:
        """The last block (96 x 8 x 8 at 64 px): the default explained layer."""
        return self.blocks[-1]

    def forward(self, x: Tensor) -> Tensor:
        for block in self.blocks:
            x = block(x)
        return self.proj(x.mean(dim=(2, 3)))


class TextTower(nn.Module):
    """Token ids (T, L) -> (T, D): embeddings, a transformer, the ``<end>`` state."""

    def __init__(self, dim: int = 64, width: int = 64, layers: int = 2) -> None:
        super().__init__()
        self.token_embedding = nn.Embedding(len(VOCABULARY), width)
        self.positional_embedding = nn.Parameter(torch.randn(CONTEXT, width) * 0.02)
        layer = nn.TransformerEncoderLayer(
            width, 4, 2 * width, dropout=0.0, batch_first=True, norm_first=True
        )
        self.transformer = nn.TransformerEncoder(
            layer, layers, enable_nested_tensor=False
        )
        self.norm = nn.LayerNorm(width)
        self.proj = nn.Linear(width, dim)

    def forward(self, ids: Tensor) -> Tensor:
        end = (ids == END).long().argmax(dim=1)  # the first <end>
        positions = torch.arange(ids.shape[1], device=ids.device)
        masked = positions[None, :] > end[:, None]  # after <end>: padding
        x = self.token_embedding(ids) + self.positional_embedding[: ids.shape[1]]
        x = self.norm(self.transformer(x, src_key_padding_mask=masked))
        return self.proj(x[torch.arange(ids.shape[0], device=ids.device), end])


class SyntheticCLIP(nn.Module):
    """The image and text towers and the learned temperature."""

    def __init__(self, dim: int = 64) -> None:
        super().__init__()
        self.image = ImageTower(dim)
        self.text = TextTower(dim)
        self.logit_scale = nn.Parameter(torch.tensor(math.log(1 / 0.07)))

    def forward(self, images: Tensor, ids: Tensor) -> Tensor:
        """(B, T) logits ``logit_scale * cos``."""
        u = F.normalize(self.image(images), dim=-1)
        v = F.normalize(self.text(ids), dim=-1)
        return self.logit_scale.exp().clamp(max=100) * u @ v.T


def tokenize(texts: Sequence[str]) -> Tensor:
    """(T, CONTEXT) ids for training (no warning: the captions fit)."""
    rows = [encode_words(t)[:CONTEXT] for t in texts]
    return torch.tensor([r + [PAD] * (CONTEXT - len(r)) for r in rows])


@contextmanager
def _one_thread() -> Iterator[None]:
    """The images are drawn with many tiny ops, which intra-op threads only
    slow down (16x on a busy 2-core machine): one thread, then restored."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(threads)


def training_data(
    seed: int = 0, singles_per_class: int = 8, scenes: int = 1500
) -> Tuple[Tensor, List[str]]:
    r"""Images and captions of the *train* classes: single objects and
    two-object scenes (phrases in random order, a random template).

    Returns:
        (N, 3, 64, 64) images and their N captions.
    """
    with _one_thread():
        return _training_data(seed, singles_per_class, scenes)


def _training_data(
    seed: int, singles_per_class: int, scenes: int
) -> Tuple[Tensor, List[str]]:
    base = ShapesFewShot("train", images_per_class=singles_per_class, seed=seed)
    gen = torch.Generator().manual_seed(seed + 5)
    images, captions = [], []

    def template(text: str) -> str:
        return TEMPLATES[
            int(torch.randint(0, len(TEMPLATES), (1,), generator=gen))
        ].format(text)

    for i in range(len(base)):
        image, label, _ = base[i]
        images.append(image)
        captions.append(template(phrase(base.classes[label])))
    two = TwoObjectScenes(base, scenes, seed=seed + 3)
    for i in range(len(two)):
        image, (a, b), _ = two[i]
        pair = [base.classes[a], base.classes[b]]
        if bool(torch.rand(1, generator=gen) < 0.5):
            pair.reverse()
        images.append(image)
        captions.append(template(scene_caption(*pair)))
    return torch.stack(images), captions


def clip_loss(logits: Tensor) -> Tensor:
    """CLIP's symmetric InfoNCE on (B, B) logits, matches on the diagonal."""
    target = torch.arange(logits.shape[0], device=logits.device)
    return (F.cross_entropy(logits, target) + F.cross_entropy(logits.T, target)) / 2


def train(
    steps: int = STEPS,
    seed: int = 0,
    batch: int = 128,
    log: Optional[list] = None,
    data: Optional[Tuple[Tensor, List[str]]] = None,
) -> SyntheticCLIP:
    r"""Trains :class:`SyntheticCLIP` from scratch with :func:`clip_loss`.

    Args:
        steps (int): optimiser steps. Default: :data:`STEPS`
        seed (int): the data and the initialisation. Default: 0
        batch (int): image–caption pairs per step. Default: 128
        log (list, optional): receives the loss of every step.
        data (tuple, optional): images and captions. Default:
                    :func:`training_data` ``(seed)``

    Returns:
        the model, in eval mode. It trains on one intra-op thread (the
        model is small: more threads only wait on each other on a busy
        machine); the caller's thread count is restored.
    """
    with _one_thread():
        return _train(steps, seed, batch, log, data)


def _train(
    steps: int,
    seed: int,
    batch: int,
    log: Optional[list],
    data: Optional[Tuple[Tensor, List[str]]],
) -> SyntheticCLIP:
    torch.manual_seed(seed)
    images, captions = _training_data(seed, 8, 1500) if data is None else data
    ids = tokenize(captions)
    model = SyntheticCLIP()
    optimizer = torch.optim.AdamW(model.parameters(), lr=3e-3, weight_decay=1e-4)
    schedule = torch.optim.lr_scheduler.OneCycleLR(
        optimizer, 3e-3, total_steps=max(steps, 1), pct_start=0.1
    )
    gen = torch.Generator().manual_seed(seed + 1)
    model.train()
    for _ in range(steps):
        pick = torch.randperm(len(images), generator=gen)[:batch]
        # flips keep the captions true (the phrases say nothing of left/right)
        x = images[pick]
        flip = torch.rand(len(pick), generator=gen) < 0.5
        x = torch.where(flip[:, None, None, None], x.flip(-1), x)
        loss = clip_loss(model(x, ids[pick]))
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        schedule.step()
        if log is not None:
            log.append(float(loss.detach()))
    return model.eval()


def _key(steps: int, seed: int) -> str:
    return config_key({"kind": "two-tower", "steps": steps, "seed": seed, "v": 1})


def trained_model(
    steps: int = STEPS, seed: int = 0, retrain: bool = False
) -> SyntheticCLIP:
    """The trained :class:`SyntheticCLIP`: shipped weights, else the cache,
    else trained now (and cached)."""
    model = shipped_cached_or_trained(
        SyntheticCLIP(), f"two-tower-{_key(steps, seed)}",
        lambda: train(steps, seed), retrain,
    )  # fmt: skip
    assert isinstance(model, SyntheticCLIP)
    return model


def as_two_tower(model: SyntheticCLIP) -> TwoTower:
    """``model`` as a :class:`~captum_sfam.image_text.TwoTower` (its score
    ``logit_scale * cos``, the image blocks, the last block by default)."""
    return TwoTower(
        model.image,
        model.text,
        model.text.token_embedding,
        encode=encode_words,
        decode=decode_word,
        context_length=CONTEXT,
        pad_token_id=PAD,
        special_token_ids=(PAD, START, END),
        vocab_size=len(VOCABULARY),
        logit_scale=float(model.logit_scale.detach().exp().clamp(max=100)),
        blocks=list(model.image.blocks),
        default_layer=model.image.features,
        name="demo:two-tower",
    )


def synthetic_two_tower(
    steps: int = STEPS, seed: int = 0, retrain: bool = False
) -> TwoTower:
    """The trained synthetic model as a :class:`~captum_sfam.image_text.TwoTower`."""
    return as_two_tower(trained_model(steps, seed, retrain))


@torch.no_grad()
def retrieval_accuracy(
    tower: TwoTower, split: str = "test", images_per_class: int = 4, seed: int = 0
) -> Dict[str, float]:
    r"""Top-1 accuracy of image -> caption among the 256 single-object
    captions (chance 1/256) on one split's images, and per attribute (the
    top caption's colour, texture, shape; chance 1/8, 1/4, 1/8).

    Returns:
        ``{"top1": ..., "colour": ..., "texture": ..., "shape": ...}``.
    """
    catalogue = all_classes()
    text_emb = tower.encode_text([phrase(c) for c in catalogue])
    data = ShapesFewShot(split, images_per_class=images_per_class, seed=seed)
    images = torch.stack([data[i][0] for i in range(len(data))])
    truth = [data.class_ids[data.label(i)] for i in range(len(data))]
    best = tower.score(tower.encode_image(images), text_emb).argmax(1).tolist()
    out = {"top1": sum(b == t for b, t in zip(best, truth)) / len(truth)}
    for attr in ("colour", "texture", "shape"):
        hits = [
            getattr(catalogue[b], attr) == getattr(catalogue[t], attr)
            for b, t in zip(best, truth)
        ]
        out[attr] = sum(hits) / len(hits)
    return out


__all__ = [
    "CONTEXT",
    "STEPS",
    "VOCABULARY",
    "SyntheticCLIP",
    "as_two_tower",
    "clip_loss",
    "encode_words",
    "phrase",
    "phrase_words",
    "retrieval_accuracy",
    "scene_caption",
    "synthetic_two_tower",
    "train",
    "trained_model",
]
