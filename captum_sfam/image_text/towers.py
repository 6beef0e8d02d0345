r"""Two-tower image–text models read into one shape: :class:`TwoTower`.

:func:`two_tower` reads open_clip ``CLIP`` / ``CustomTextCLIP`` (ViT and
ModifiedResNet image towers), Hugging Face ``CLIPModel`` and ``SiglipModel``
(transformers 4 and 5) and anything that already is a :class:`TwoTower`.
"""

from __future__ import annotations

import math
import warnings
from typing import Any, Callable, Dict, FrozenSet, Iterable, List, Optional, Sequence

import torch
from torch import Tensor, nn

from .._engine.model import patch_size, prefix_tokens
from .modules import ModelScore, Tower
from .tokenizers import codec

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
            not truncated, not padded (``None``: no tokenizer was given;
            ``tokenize`` raises).
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
            block / stage when ``None``; the adapters give the last block's
            first norm for towers that pool the class token, whose last
            block's patch tokens do not reach the embedding).
        map_layers: the layers ``LayerMultiBlockGrad`` aggregates by
            default (``blocks`` when ``None``; the blocks' first norms for
            class-token towers).
        keep_last_on_truncation: a truncated text keeps its last id (the
            end token the tower pools at) in the last position.
        end_token_id: the end token's id (``tokens`` keeps one trailing
            padding id when it is also the end token).
        name: a label for messages.
    """

    def __init__(
        self,
        image_model: nn.Module,
        text_model: nn.Module,
        token_embedding: nn.Module,
        *,
        encode: Optional[Callable[[str], List[int]]],
        decode: Callable[[int], str],
        context_length: int,
        pad_token_id: int,
        special_token_ids: Iterable[int],
        vocab_size: Optional[int] = None,
        logit_scale: float = 1.0,
        logit_bias: Optional[float] = None,
        blocks: Sequence[nn.Module] = (),
        default_layer: Optional[nn.Module] = None,
        map_layers: Optional[Sequence[nn.Module]] = None,
        keep_last_on_truncation: bool = True,
        end_token_id: Optional[int] = None,
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
        self.map_layers: List[nn.Module] = list(
            self.blocks if map_layers is None else map_layers
        )
        self.keep_last_on_truncation = keep_last_on_truncation
        self.end_token_id = end_token_id
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
        if self._encode is None:
            raise ValueError(
                f"tokenizer: {self.name} was read without one; pass "
                "two_tower(model, tokenizer=...) (open_clip.get_tokenizer(name) "
                "or AutoTokenizer.from_pretrained(name))"
            )
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
        """Token strings of each row of ``ids`` (T, L), the trailing padding
        dropped (when the end token is the padding token, as in SigLIP, one
        is kept: the text's own end)."""
        out = []
        for row in ids.tolist():
            end = len(row)
            while end > 1 and row[end - 1] == self.pad_token_id:
                end -= 1
            if end < len(row) and self.end_token_id == self.pad_token_id:
                end += 1
            out.append([self._decode(int(t)) for t in row[:end]])
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


def two_tower(model: Any, tokenizer: Any = None) -> TwoTower:
    r"""Read a two-tower image–text model into a :class:`TwoTower`.

    Args:
        model: open_clip ``CLIP`` / ``CustomTextCLIP`` (ViT or ModifiedResNet
            image tower), a Hugging Face ``CLIPModel`` or ``SiglipModel``
            (transformers 4 or 5), or a :class:`TwoTower` (returned as is).
        tokenizer: open_clip's (``open_clip.get_tokenizer(name)``; default
            for open_clip: the OpenAI CLIP BPE tokenizer, offline) or a
            Hugging Face tokenizer (no default: ``AutoTokenizer.
            from_pretrained(name)``; without one ``tokenize`` raises). Its
            vocabulary must fit the model's (``ValueError`` otherwise).

    Returns:
        *TwoTower*: the image tower is the model's own module (open_clip's
        ``model.visual``) or a thin wrapper calling ``get_image_features``;
        the class token (open_clip ViT, HF CLIP: one; SigLIP: none) and the
        patch grid are read from the model by every member.
    """
    if isinstance(model, TwoTower):
        return model
    if not isinstance(model, nn.Module):
        raise TypeError(f"model must be a torch.nn.Module, got {type(model).__name__}")
    if hasattr(model, "encode_image") and isinstance(
        getattr(model, "visual", None), nn.Module
    ):
        return _open_clip(model, tokenizer)
    if hasattr(model, "get_image_features") and hasattr(model, "get_text_features"):
        return _hugging_face(model, tokenizer)
    raise TypeError(
        f"model is a {type(model).__name__}: two_tower reads open_clip CLIP, "
        "Hugging Face CLIPModel / SiglipModel or a TwoTower; build a TwoTower "
        "from the pieces for another model"
    )


def _codec_fields(
    tokenizer: Any, vocab: Optional[int], name: str, context: int
) -> Dict[str, Any]:
    if tokenizer is None:
        return dict(encode=None, decode=str, pad_token_id=0, special_token_ids=())
    text = codec(tokenizer)
    if text.context_length is not None and text.context_length != context:
        raise ValueError(
            f"tokenizer is made for a context of {text.context_length} tokens "
            f"but the text tower of {name} reads {context}: the tokenizer does "
            "not match the model; pass the model's own tokenizer"
        )
    if vocab is not None and text.vocab_size is not None and text.vocab_size > vocab:
        raise ValueError(
            f"tokenizer has {text.vocab_size} tokens but the text tower of {name} "
            f"embeds {vocab}: the tokenizer does not match the model; pass the "
            "model's own tokenizer"
        )
    return dict(
        encode=text.encode, decode=text.decode, pad_token_id=text.pad_token_id,
        special_token_ids=text.special_token_ids,
        keep_last_on_truncation=text.keep_last_on_truncation,
        end_token_id=text.end_token_id,
    )  # fmt: skip


def _scalar(value: Any, exp: bool) -> Optional[float]:
    if value is None:
        return None
    value = float(torch.as_tensor(value).detach().float().reshape(-1)[0])
    return math.exp(value) if exp else value


def _open_clip(model: nn.Module, tokenizer: Any) -> TwoTower:
    text = getattr(model, "text", None)  # CustomTextCLIP
    context = int(getattr(model, "context_length", None) or text.context_length)
    if tokenizer is None:
        import open_clip  # the OpenAI CLIP BPE tokenizer ships with open_clip

        tokenizer = open_clip.get_tokenizer("ViT-B-32", context_length=context)
    visual = model.visual
    resblocks = getattr(getattr(visual, "transformer", None), "resblocks", None)
    if resblocks is not None:  # ViT: a class token unless the tower pools
        blocks = list(resblocks)
        token = (
            getattr(visual, "attn_pool", None) is None
            and getattr(visual, "pool_type", "tok") == "tok"
        )
        norms = [getattr(b, "ln_1", b) for b in blocks]
    elif hasattr(getattr(visual, "trunk", None), "blocks"):  # TimmModel (SigLIP)
        blocks = list(visual.trunk.blocks)
        token = getattr(visual.trunk, "global_pool", "") == "token"
        norms = [getattr(b, "norm1", b) for b in blocks]
    else:  # ModifiedResNet: its four stages
        blocks = [getattr(visual, f"layer{i}") for i in range(1, 5)]
        token, norms = False, blocks
    embedding = getattr(model, "token_embedding", None) or getattr(
        text, "token_embedding", None
    )
    if not isinstance(embedding, nn.Module):
        raise TypeError("model: open_clip text tower without a token_embedding")
    vocab = getattr(model, "vocab_size", None) or getattr(text, "vocab_size", None)
    return TwoTower(
        visual, Tower(model, lambda m, ids: m.encode_text(ids)), embedding,
        context_length=context, vocab_size=vocab,
        logit_scale=_scalar(model.logit_scale, True),
        logit_bias=_scalar(getattr(model, "logit_bias", None), False),
        blocks=blocks, default_layer=norms[-1] if token else blocks[-1],
        map_layers=norms if token else blocks,
        name=f"open_clip {type(model).__name__}",
        **_codec_fields(tokenizer, vocab, "the model", context),
    )  # fmt: skip


def _hugging_face(model: nn.Module, tokenizer: Any) -> TwoTower:
    config = model.config
    kind = str(getattr(config, "model_type", ""))
    text_config, vision = config.text_config, model.vision_model
    blocks = list(vision.encoder.layers)
    token = not kind.startswith("siglip")  # SigLIP pools with a head
    norms = [getattr(b, "layer_norm1", b) for b in blocks]
    image = Tower(
        model, lambda m, x: m.get_image_features(pixel_values=x),
        num_prefix_tokens=prefix_tokens(model), patch_size=patch_size(model),
    )  # fmt: skip
    vocab = int(text_config.vocab_size)
    return TwoTower(
        image, Tower(model, lambda m, ids: m.get_text_features(input_ids=ids)),
        model.text_model.embeddings.token_embedding,
        context_length=int(text_config.max_position_embeddings), vocab_size=vocab,
        logit_scale=_scalar(model.logit_scale, True),
        logit_bias=_scalar(getattr(model, "logit_bias", None), False),
        blocks=blocks, default_layer=norms[-1] if token else blocks[-1],
        map_layers=norms if token else blocks,
        name=f"Hugging Face {type(model).__name__}",
        **_codec_fields(
            tokenizer, vocab, "the model", int(text_config.max_position_embeddings)
        ),
    )  # fmt: skip
