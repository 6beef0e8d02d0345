r"""Tokenizers read into one shape: :class:`TextCodec`.

open_clip's ``SimpleTokenizer`` (``open_clip.get_tokenizer(name)``, offline)
and open_clip's ``HFTokenizer``, and Hugging Face tokenizers
(``AutoTokenizer.from_pretrained(name)``, or any ``PreTrainedTokenizer``
you build): one text -> its ids (start and end tokens included, not
truncated, not padded), one id -> its string, the padding id, the special
ids and the vocabulary size.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Callable, FrozenSet, List, Optional


@dataclass(frozen=True)
class TextCodec:
    """What a :class:`~captum_sfam.image_text.TwoTower` needs of a tokenizer."""

    encode: Callable[[str], List[int]]
    decode: Callable[[int], str]
    pad_token_id: int
    special_token_ids: FrozenSet[int]
    vocab_size: Optional[int]
    #: pool at the end token: a truncated text keeps it last
    keep_last_on_truncation: bool = True
    #: the context the tokenizer was made for, when it says (None: any)
    context_length: Optional[int] = None
    #: the end token's id
    end_token_id: Optional[int] = None


def codec(tokenizer: Any) -> TextCodec:
    """The :class:`TextCodec` of an open_clip or Hugging Face tokenizer;
    ``TypeError`` naming ``tokenizer`` for anything else."""
    if isinstance(tokenizer, TextCodec):
        return tokenizer
    inner = getattr(tokenizer, "tokenizer", None)  # open_clip's HFTokenizer
    if inner is not None and hasattr(inner, "convert_ids_to_tokens"):
        return _hugging_face(inner)
    if hasattr(tokenizer, "convert_ids_to_tokens"):
        return _hugging_face(tokenizer)
    if hasattr(tokenizer, "encoder") and hasattr(tokenizer, "decoder"):
        return _simple(tokenizer)
    raise TypeError(
        f"tokenizer is a {type(tokenizer).__name__}: pass open_clip's "
        "(open_clip.get_tokenizer(name)) or a Hugging Face tokenizer "
        "(AutoTokenizer.from_pretrained(name)), or build a TwoTower with "
        "encode= and decode="
    )


def _simple(tok: Any) -> TextCodec:
    """open_clip's BPE ``SimpleTokenizer``: start, BPE ids, end; pads with 0."""
    start = int(getattr(tok, "sot_token_id", tok.encoder["<start_of_text>"]))
    end = int(getattr(tok, "eot_token_id", tok.encoder["<end_of_text>"]))
    decoder = tok.decoder

    def encode(text: str) -> List[int]:
        return [start, *tok.encode(text), end]

    def decode(index: int) -> str:
        return str(decoder.get(index, f"<{index}>")).replace("</w>", "")

    context = getattr(tok, "context_length", None)
    return TextCodec(
        encode, decode, 0, frozenset({start, end, 0}), len(tok.encoder), True,
        int(context) if isinstance(context, int) else None, end,
    )  # fmt: skip


def _hugging_face(tok: Any) -> TextCodec:
    """A Hugging Face tokenizer: its special tokens added, its padding id."""
    pad = tok.pad_token_id
    if pad is None:
        pad = tok.eos_token_id
    if pad is None:
        raise ValueError(
            "tokenizer has neither a pad_token_id nor an eos_token_id: set "
            "tokenizer.pad_token"
        )
    specials = frozenset(int(i) for i in tok.all_special_ids) | {int(pad)}

    def encode(text: str) -> List[int]:
        return list(tok(text, add_special_tokens=True)["input_ids"])

    def decode(index: int) -> str:
        token = tok.convert_ids_to_tokens(int(index))
        return str(token).replace("</w>", "").replace("\u2581", "")

    context = getattr(tok, "model_max_length", None)  # 1e30 when unset
    known = isinstance(context, int) and 0 < context < 100_000
    return TextCodec(
        encode, decode, int(pad), specials, len(tok), True,
        context if known else None, tok.eos_token_id,
    )  # fmt: skip
