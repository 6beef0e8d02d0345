r"""Two-tower image–text models read into one shape: :class:`TwoTower`.

:func:`two_tower` reads open_clip ``CLIP`` / ``CustomTextCLIP`` (ViT and
ModifiedResNet image towers), Hugging Face ``CLIPModel`` and ``SiglipModel``
(transformers 4 and 5) and anything that already is a :class:`TwoTower`.
"""

from __future__ import annotations

import math
import warnings
from typing import Callable, FrozenSet, Iterable, List, Optional, Sequence

import torch
from torch import Tensor, nn

__all__ = ["TwoTower", "two_tower"]


class TwoTower:
    r"""An image tower, a text tower, their tokenizer and the model's score.

    Subclass it (or build it from the pieces) for any two-tower model; the
    adapters of :func:`two_tower` build it for open_clip and Hugging Face
    models.

    Args:
        image_model: images (B, 3, H, W) -> (B, D) embeddings; a valid
            ``forward_func`` for every member (its layers are inside it).
        text_model: token ids (T, L) long -> (T, D) embeddings.
        token_embedding: the module whose output is the (T, L, W) token
            embeddings (for Captum's ``LayerIntegratedGradients``).
        encode: one text -> its token ids, start and end tokens included,
            not truncated, not padded.
        decode: one token id -> its string.
        context_length: the text tower's context L (ids are padded to it).
        pad_token_id: the id padding a text to ``context_length``.
        special_token_ids: start / end / pad ids (kept by the text side's
            integrated-gradients baseline).
        vocab_size: the text tower's vocabulary size (ids at or above it
            are refused: a tokenizer of another model).
        logit_scale: the score's temperature :math:`t` (not its logarithm).
        logit_bias: SigLIP's bias :math:`b` (``None``: none).
        blocks: the image tower's transformer blocks (or ResNet stages).
        default_layer: the layer a map is read at by default (the last
            block / stage when ``None``).
        keep_last_on_truncation: a truncated text keeps its last id (the
            end token the tower pools at) in the last position.
        name: a label for messages.
    """

    def __init__(
        self,
        image_model: nn.Module,
        text_model: nn.Module,
        token_embedding: nn.Module,
        *,
        encode: Callable[[str], List[int]],
        decode: Callable[[int], str],
        context_length: int,
        pad_token_id: int,
        special_token_ids: Iterable[int],
        vocab_size: Optional[int] = None,
        logit_scale: float = 1.0,
        logit_bias: Optional[float] = None,
        blocks: Sequence[nn.Module] = (),
        default_layer: Optional[nn.Module] = None,
        keep_last_on_truncation: bool = True,
        name: str = "two-tower model",
    ) -> None:
        self.image_model = image_model
        self.text_model = text_model
        self.token_embedding = token_embedding
        self._encode = encode
        self._decode = decode
        self.context_length = int(context_length)
        self.pad_token_id = int(pad_token_id)
        self.special_token_ids: FrozenSet[int] = frozenset(
            int(i) for i in special_token_ids
        )
        self.vocab_size = vocab_size
        self.logit_scale = float(logit_scale)
        self.logit_bias = None if logit_bias is None else float(logit_bias)
        self.blocks: List[nn.Module] = list(blocks)
        if default_layer is None and self.blocks:
            default_layer = self.blocks[-1]
        self.default_layer = default_layer
        self.keep_last_on_truncation = keep_last_on_truncation
        self.name = name

    def __repr__(self) -> str:
        return (
            f"TwoTower({self.name}, context_length={self.context_length}, "
            f"blocks={len(self.blocks)})"
        )

    # -- text ---------------------------------------------------------------
    def tokenize(self, texts: Sequence[str]) -> Tensor:
        r"""Token ids of ``texts``, padded to the context length.

        Args:
            texts: a string or a sequence of strings.

        Returns:
            (T, L) long ids, ``L = context_length``. A text longer than the
            context is truncated (its end token kept last) with a warning
            naming it; an empty text raises a ``ValueError``.
        """
        if isinstance(texts, str):
            texts = [texts]
        if len(texts) == 0:
            raise ValueError("texts is empty: pass at least one text")
        rows = []
        for i, text in enumerate(texts):
            if not isinstance(text, str):
                raise TypeError(f"texts[{i}] is a {type(text).__name__}: pass strings")
            if not text.strip():
                raise ValueError(
                    f"texts[{i}] is empty: an empty text has no token to "
                    "explain; pass a caption"
                )
            ids = [int(t) for t in self._encode(text)]
            if len(ids) > self.context_length:
                warnings.warn(
                    f"text {text[:60]!r} has {len(ids)} tokens, more than "
                    f"the context length {self.context_length} of "
                    f"{self.name}: truncated to its first "
                    f"{self.context_length} tokens",
                    stacklevel=2,
                )
                last = ids[-1]
                ids = ids[: self.context_length]
                if self.keep_last_on_truncation:
                    ids[-1] = last
            rows.append(ids + [self.pad_token_id] * (self.context_length - len(ids)))
        out = torch.tensor(rows, dtype=torch.long)
        self.check_ids(out)
        return out

    def check_ids(self, ids: Tensor, name: str = "ids") -> None:
        """Refuse ids the text tower cannot read (a tokenizer of another
        model): wrong context length, ids outside the vocabulary."""
        if not isinstance(ids, Tensor) or ids.dim() != 2 or ids.dtype != torch.long:
            raise TypeError(f"{name} must be a (T, L) long tensor of token ids")
        if ids.shape[1] > self.context_length:
            raise ValueError(
                f"{name} has {ids.shape[1]} positions, more than the context "
                f"length {self.context_length} of {self.name}: the tokenizer "
                "does not match the model; pass the model's own tokenizer"
            )
        if (
            self.vocab_size is not None
            and ids.numel()
            and (int(ids.max()) >= self.vocab_size or int(ids.min()) < 0)
        ):
            raise ValueError(
                f"{name} holds the id {int(ids.max())}, outside the vocabulary "
                f"({self.vocab_size} ids) of {self.name}: the tokenizer does "
                "not match the model; pass the model's own tokenizer"
            )

    def tokens(self, ids: Tensor) -> List[List[str]]:
        """Token strings of each row of ``ids`` (T, L), padding dropped (the
        first pad after the end token ends a row)."""
        out = []
        for row in ids.tolist():
            strings = []
            for i, t in enumerate(row):
                if (
                    t == self.pad_token_id
                    and i > 0
                    and all(u == self.pad_token_id for u in row[i:])
                ):
                    break
                strings.append(self._decode(int(t)))
            out.append(strings)
        return out

    def _as_ids(self, texts) -> Tensor:
        if isinstance(texts, Tensor):
            self.check_ids(texts, "texts")
            return texts
        return self.tokenize(texts)

    def _device(self, module: nn.Module) -> torch.device:
        for p in module.parameters():
            return p.device
        return torch.device("cpu")

    @torch.no_grad()
    def encode_text(self, texts) -> Tensor:
        """(T, D) text embeddings of strings or (T, L) ids, no graph."""
        ids = self._as_ids(texts).to(self._device(self.text_model))
        return self.text_model(ids)

    @torch.no_grad()
    def encode_image(self, images: Tensor) -> Tensor:
        """(B, D) image embeddings, no graph."""
        return self.image_model(images)

    # -- the model's own score ---------------------------------------------
    def score(self, image_emb: Tensor, text_emb: Tensor) -> Tensor:
        r"""The model's own score of every (image, text) pair, (B, T):
        :math:`t \cos(u, v) + b` (CLIP: no bias; SigLIP: with its bias).

        Raises a ``ValueError`` naming the argument when the widths or the
        devices differ."""
        _check_pair(image_emb, text_emb)
        u = nn.functional.normalize(image_emb.float(), dim=-1)
        v = nn.functional.normalize(text_emb.float(), dim=-1)
        s = self.logit_scale * (u @ v.T)
        return s if self.logit_bias is None else s + self.logit_bias

    def probability(self, image_emb: Tensor, text_emb: Tensor) -> Tensor:
        """(B, T) probabilities: the sigmoid of the score when the model has
        a bias (SigLIP), else the softmax over the texts (CLIP)."""
        s = self.score(image_emb, text_emb)
        return torch.sigmoid(s) if self.logit_bias is not None else s.softmax(-1)

    @property
    def metric(self) -> Callable[[Tensor, Tensor], Tensor]:
        """The score as a row-wise callable ((P, D), (P, D)) -> (P,), for a
        member's ``metric=``."""
        return ModelScore(self.logit_scale, self.logit_bias)


class ModelScore:
    r"""Row-wise score :math:`t \cos(a_p, b_p) + b` of two (..., D) batches."""

    def __init__(self, logit_scale: float, logit_bias: Optional[float]) -> None:
        self.logit_scale, self.logit_bias = logit_scale, logit_bias

    def __call__(self, a: Tensor, b: Tensor) -> Tensor:
        cos = nn.functional.cosine_similarity(a, b, dim=-1, eps=1e-12)
        s = self.logit_scale * cos
        return s if self.logit_bias is None else s + self.logit_bias

    def __repr__(self) -> str:
        bias = "" if self.logit_bias is None else f" + {self.logit_bias:.4g}"
        return f"ModelScore({self.logit_scale:.4g} * cos{bias})"


def _check_pair(image_emb: Tensor, text_emb: Tensor) -> None:
    if image_emb.shape[-1] != text_emb.shape[-1]:
        raise ValueError(
            f"text_emb has width {text_emb.shape[-1]}, image_emb "
            f"{image_emb.shape[-1]}: embeddings of the same model are needed"
        )
    if image_emb.device != text_emb.device:
        raise ValueError(
            f"text_emb is on {text_emb.device}, image_emb on "
            f"{image_emb.device}: move them to one device"
        )


def two_tower(model, tokenizer=None) -> TwoTower:
    """Read ``model`` into a :class:`TwoTower` (adapters below)."""
    if isinstance(model, TwoTower):
        return model
    raise TypeError(
        f"model is a {type(model).__name__}: two_tower reads open_clip CLIP, "
        "Hugging Face CLIPModel / SiglipModel or a TwoTower; build a TwoTower "
        "from the pieces for another model"
    )


_ = math  # used by the adapters
