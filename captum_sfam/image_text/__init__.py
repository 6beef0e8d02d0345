r"""Image–text: explain two-tower models (CLIP, SigLIP and any other) on both
sides of the match.

:func:`two_tower` reads open_clip ``CLIP``, Hugging Face ``CLIPModel`` and
``SiglipModel`` into a :class:`TwoTower`: the image tower (a ``forward_func``
for every member), the text tower, the token embedding, the tokenizer and the
model's own score. The image side is explained by every gradient member with
``references=`` text embeddings; the text side by
``captum_sfam.image_text.text``.
"""

from ..methods.multiblock import LayerMultiBlockGrad
from .text import TokenScores, text_token_scores
from .towers import TwoTower, two_tower

__all__ = [
    "LayerMultiBlockGrad",
    "TokenScores",
    "TwoTower",
    "text_token_scores",
    "two_tower",
]
