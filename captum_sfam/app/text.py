r"""``captum-sfam explain IMAGE --text "a photo of a cat" [--text ...]``.

Explains an image against one or more texts with a two-tower model
(``--model open_clip:ARCH[:TAG]``, ``hf:NAME`` or ``demo:two-tower``; see
:func:`~captum_sfam.app.models.load_two_tower`): for every text, the image
map of a gradient member with the text embeddings as ``references=`` (CG-RAM
by default) and the score of every word
(:func:`~captum_sfam.image_text.text.text_token_scores`), drawn in one
figure: the map over the image on the left, the words coloured by their
scores on the right (red: raised the match, blue: lowered it).
"""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import List, Sequence, Tuple

import torch
from torch import Tensor

from ..methods import REGISTRY
from .errors import CLIError, one_line
from .files import load_image
from .methods import build_method, normalize
from .models import load_two_tower

#: the member ``--text`` uses when ``--method`` is not given
TEXT_METHOD = "cgram"


def text_method_key(method: object) -> str:
    """``--method`` for ``--text``: a gradient member (CG-RAM by default)."""
    key = TEXT_METHOD if method is None else str(method)
    if key in REGISTRY and REGISTRY[key].forward_only:
        gradient = ", ".join(k for k, m in REGISTRY.items() if not m.forward_only)
        raise CLIError(
            f"--method {key} is forward-only: it needs the other side's "
            f"activations at the layer, which a text has not; with --text use "
            f"a gradient member: {gradient} (default {TEXT_METHOD})"
        )
    return key


def explain_text(args: argparse.Namespace) -> int:
    """Runs ``captum-sfam explain IMAGE --text ...``: prints each text's score
    and word scores, writes the figure."""
    if args.support:
        raise CLIError(
            "--text explains one image against texts: pass one image, not "
            f"support images ({', '.join(args.support)})"
        )
    if not Path(args.query).is_file():
        raise CLIError(f"no such image file: {args.query}")
    tower, side, mean, std = load_two_tower(args.model, args.weights)
    key = text_method_key(args.method)
    layer = tower.default_layer
    if args.layer:
        try:
            layer = tower.image_model.get_submodule(args.layer)
        except AttributeError as error:
            raise CLIError(
                f"unknown layer {args.layer!r} of the image tower"
            ) from error
    method = build_method(key, tower.image_model, layer, args.metric)
    image = normalize(load_image(args.query, side), mean, std)[None]
    texts: List[str] = list(args.text)
    try:
        from ..image_text.text import text_token_scores

        references = tower.encode_text(texts)
        maps = torch.cat(
            [
                method.attribute(image, references=references, target=j)
                for j in range(len(texts))
            ]
        )
        words = text_token_scores(tower, image, texts)
    except (ValueError, TypeError, RuntimeError) as error:
        raise CLIError(one_line(error)) from error
    for t, text in enumerate(texts):
        shown = " ".join(f"{w}:{s:+.3g}" for w, s in words.words(t))
        print(f"{text!r}: score {float(words.score[t]):.4g}; words {shown}")
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    name = REGISTRY[key].display_name
    draw(image[0], maps, words.tokens, words.scores, texts, out, mean, std, name)
    print(f"wrote {out}")
    return 0


def draw(
    image: Tensor,
    maps: Tensor,
    tokens: Sequence[Sequence[str]],
    scores: Sequence[Tensor],
    texts: Sequence[str],
    path: Path,
    mean: Tuple[float, ...],
    std: Tuple[float, ...],
    method: str,
) -> None:
    r"""One row per text: the map over the image, the words coloured by score.

    Args:
        image (Tensor): (3, H, W), normalised with ``mean`` / ``std``.
        maps (Tensor): (T, 1, h, w) maps, one per text.
        tokens, scores: the words of each text and their scores.
        texts (sequence of str): the texts (row titles).
        path (Path): the figure file.
        mean, std: the normalisation to undo for display.
        method (str): the image map's name.
    """
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from matplotlib import colormaps

    m = torch.tensor(mean).view(3, 1, 1)
    s = torch.tensor(std).view(3, 1, 1)
    shown = (image.detach().cpu() * s + m).clamp(0, 1).permute(1, 2, 0).numpy()
    size = image.shape[-2:]
    up = torch.nn.functional.interpolate(
        maps.detach().float().cpu(), size=size, mode="bilinear", align_corners=False
    )
    rows = len(texts)
    fig, axes = plt.subplots(
        rows, 2, figsize=(9, 3 * rows), squeeze=False, width_ratios=[1, 2]
    )
    cmap = colormaps["coolwarm"]
    for t in range(rows):
        ax = axes[t][0]
        ax.imshow(shown)
        ax.imshow(up[t, 0].numpy(), cmap="jet", alpha=0.45)
        ax.set_title(f"{method}: {texts[t][:40]!r}", fontsize=9)
        ax.axis("off")
        ax = axes[t][1]
        ax.axis("off")
        peak = float(scores[t].abs().max()) or 1.0
        x, y = 0.0, 0.8
        for word, score in zip(tokens[t], scores[t].tolist()):
            if x > 0.8:  # next line
                x, y = 0.0, y - 0.2
            colour = cmap(0.5 + 0.5 * score / peak)
            ax.text(
                x, y, word, fontsize=11, va="center", transform=ax.transAxes,
                bbox={"facecolor": colour, "edgecolor": "none", "pad": 2},
            )  # fmt: skip
            x += 0.02 * (len(word) + 1)
        ax.set_title(
            "word scores (red: raised the match, blue: lowered it)", fontsize=9
        )
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)


__all__ = ["TEXT_METHOD", "draw", "explain_text", "text_method_key"]
