r"""Image files in, pictures out: the package's one image reader and one display.

- :func:`load_image` reads an image file of any mode Pillow opens (8- and
  16-bit, greyscale, palette, CMYK, with or without alpha, EXIF-rotated) into
  a ``(3, size, size)`` tensor in [0, 1].
- :func:`to_display` turns an image as a model took it (normalised, any
  layout, a tensor or an array) into the ``(H, W, 3)`` picture a person sees.

Both need numpy; :func:`load_image` needs pillow (the ``demo`` extra). Neither
is imported by ``import captum_sfam``.
"""

from __future__ import annotations

import warnings
from pathlib import Path
from typing import TYPE_CHECKING, Any, Callable, Optional, Sequence, Union

import torch
import torch.nn.functional as F
from torch import Tensor

from ._optional import require_extra

if TYPE_CHECKING:
    import numpy as np

PathLike = Union[str, Path]
ImageLike = Union["np.ndarray", Tensor]
#: how far past [0, 1] a float image may lie and still be shown as it is
#: (bilinear resizing overshoots a little)
RANGE_TOLERANCE = 0.05


# ---------------------------------------------------------- reading -------
def _to_rgb_array(img: Any) -> np.ndarray:
    """A Pillow image of any mode -> float32 numpy (H, W, 3) in [0, 1]."""
    import numpy as np
    from PIL import Image

    mode = img.mode
    if mode.startswith("I;16") or mode in ("I", "F"):
        array = np.asarray(img).astype(np.float64)
        if mode.startswith("I;16"):
            scale = 65535.0
        elif mode == "I":
            # 16-bit PNGs open as mode I; wider integers use their own range
            scale = 65535.0 if array.max(initial=0) <= 65535 else 2.0**31 - 1
        else:
            top = float(array.max(initial=0))
            scale = top if top > 1.0 else 1.0
        grey = np.clip(array / scale, 0.0, 1.0).astype(np.float32)
        return np.repeat(grey[..., None], 3, axis=-1)
    if mode == "P" and "transparency" in img.info:
        img = img.convert("RGBA")
        mode = "RGBA"
    if mode in ("RGBA", "LA", "PA", "RGBa", "La"):
        rgba = img.convert("RGBA")
        background = Image.new("RGBA", rgba.size, (255, 255, 255, 255))
        img = Image.alpha_composite(background, rgba)
    return np.asarray(img.convert("RGB"), dtype=np.float32) / 255.0


def load_image(path: PathLike, size: int = 224) -> Tensor:
    r"""Reads an image file into a (3, size, size) tensor in [0, 1].

    8-bit and 16-bit (scaled by 65535) greyscale, palette, CMYK and RGB
    images are converted to RGB; transparent pixels (alpha, palette
    transparency) are composited on white, as a viewer shows them; the EXIF
    orientation is applied. The image is resized to ``size x size``
    (bilinear, antialiased), not normalised.

    Args:
        path (str or Path): the image file (any format Pillow reads).
        size (int): the side of the output, in pixels. Default: 224

    Returns:
        Tensor (3, size, size), float32 in [0, 1].

    Raises:
        ImportError: pillow is not installed (the message names the extra).
        ValueError: ``size`` is not a positive int, or the file is not an
                    image Pillow can read (``cannot read image PATH: ...``).
        FileNotFoundError: there is no file at ``path``.
    """
    require_extra("PIL", "pillow")
    from PIL import Image, ImageOps

    if isinstance(size, bool) or not isinstance(size, int) or size <= 0:
        raise ValueError(f"image size must be a positive whole number, got {size!r}")
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"no such image file: {path}")
    try:
        with Image.open(path) as img:
            img.load()
            img = ImageOps.exif_transpose(img) or img
            array = _to_rgb_array(img)
    except Exception as error:  # noqa: BLE001 - Pillow's many failures
        lines = str(error).strip().splitlines()
        reason = type(error).__name__ + (f": {lines[0]}" if lines else "")
        raise ValueError(f"cannot read image {path}: {reason}") from error
    x = torch.from_numpy(array).permute(2, 0, 1).unsqueeze(0)
    x = F.interpolate(x, size=(size, size), mode="bilinear", antialias=True)
    return x[0].clamp(0.0, 1.0)


# --------------------------------------------------------- display -------
def _as_hwc(image: ImageLike) -> np.ndarray:
    """Any image layout -> numpy (H, W, 3), dtype kept."""
    import numpy as np

    array = image.detach().cpu().numpy() if isinstance(image, Tensor) else image
    array = np.asarray(array)
    if array.ndim == 4 and array.shape[0] == 1:
        array = array[0]  # a batch of one
    if array.ndim == 3 and array.shape[0] in (1, 3) and array.shape[-1] not in (1, 3):
        array = array.transpose(1, 2, 0)  # CHW -> HWC
    if array.ndim == 2:
        array = array[..., None]
    if array.ndim != 3 or array.shape[-1] not in (1, 3, 4):
        raise ValueError(
            f"expected an image (H, W, 3) or (3, H, W), got shape {array.shape}"
        )
    array = array[..., :3]
    if array.shape[-1] == 1:
        array = np.repeat(array, 3, axis=-1)
    return array


def _min_max(array: np.ndarray, given: bool, stacklevel: int) -> np.ndarray:
    """Min-max scales a float image outside [0, 1] with a warning
    (``stacklevel`` as seen from here); an image within [0, 1] up to
    :data:`RANGE_TOLERANCE` is returned unchanged."""
    import numpy as np

    finite = array[np.isfinite(array)]
    low = float(finite.min()) if finite.size else 0.0
    high = float(finite.max()) if finite.size else 0.0
    if low >= -RANGE_TOLERANCE and high <= 1.0 + RANGE_TOLERANCE:
        return array
    if given:
        message = (
            f"the denormalised image lies in [{low:.3g}, {high:.3g}], not "
            "[0, 1]: check that mean=/std= (or denormalize=) are the "
            "normalisation the model used; shown min-max scaled"
        )
    else:
        message = (
            f"image values lie in [{low:.3g}, {high:.3g}], outside [0, 1]: "
            "shown min-max scaled. Pass the model's normalisation, "
            "mean=/std= (e.g. mean=(0.485, 0.456, 0.406), std=(0.229, "
            "0.224, 0.225)) or denormalize=, to show the image as it is"
        )
    warnings.warn(message, UserWarning, stacklevel=stacklevel)
    span = high - low
    return (array - low) / span if span > 0 else np.zeros_like(array)


def to_display(
    image: ImageLike,
    mean: Optional[Sequence[float]] = None,
    std: Optional[Sequence[float]] = None,
    denormalize: Optional[Callable[[ImageLike], ImageLike]] = None,
    *,
    stacklevel: int = 2,
) -> np.ndarray:
    r"""An image as a person sees it: numpy (H, W, 3), float64 in [0, 1].

    The model's normalisation is undone with ``denormalize(image)`` or
    ``image * std + mean`` (per channel). Integer images are divided by their
    type's maximum (255 for uint8), booleans are 0 or 1. A float image that
    still lies outside [0, 1] (beyond a tolerance of 0.05) is min-max scaled
    with a ``UserWarning``: without a normalisation the warning names
    ``mean=``/``std=``/``denormalize=``, with one it asks to check it. The
    result is never a black or clipped panel; NaN is shown as 0.

    Args:
        image (Tensor or numpy array): (H, W, 3), (3, H, W), (1, 3, H, W),
                    (H, W), (1, H, W) or (H, W, 4) (alpha dropped).
        mean (sequence of float, optional): the per-channel mean (1 or 3
                    numbers) the model's inputs were normalised with; given
                    together with ``std``. Default: None
        std (sequence of float, optional): the per-channel standard
                    deviation (1 or 3 numbers). Default: None
        denormalize (Callable, optional): instead of ``mean``/``std``, maps
                    the image as passed to an image in [0, 1] (any layout
                    accepted here). Default: None
        stacklevel (int, optional): the frame the warning points at, as in
                    :func:`warnings.warn` (2: the caller of this function).
                    Default: 2

    Returns:
        numpy array (H, W, 3), float64 in [0, 1].

    Raises:
        ValueError: both ``mean``/``std`` and ``denormalize`` given, only one
                    of ``mean`` and ``std``, ``mean``/``std`` with an integer
                    image or with other than 1 or 3 numbers, or an array that
                    is not an image.
    """
    import numpy as np

    if denormalize is not None and (mean is not None or std is not None):
        raise ValueError("pass either mean=/std= or denormalize=, not both")
    if (mean is None) != (std is None):
        raise ValueError("mean= and std= go together: pass both")
    if denormalize is not None:
        image = denormalize(image)
    array = _as_hwc(image)
    if np.issubdtype(array.dtype, np.integer) or array.dtype == np.bool_:
        if mean is not None:
            raise ValueError(
                "mean=/std= apply to float model inputs, not to an integer image"
            )
        top = 1 if array.dtype == np.bool_ else np.iinfo(array.dtype).max
        return array.astype(np.float64) / top
    array = array.astype(np.float64)
    if mean is not None:
        m, s = np.asarray(mean, dtype=np.float64), np.asarray(std, dtype=np.float64)
        if m.size not in (1, 3) or s.size not in (1, 3):
            raise ValueError("mean= and std= take 1 or 3 numbers")
        array = array * s.reshape(-1) + m.reshape(-1)
    given = denormalize is not None or mean is not None
    array = _min_max(array, given, stacklevel + 1)
    return np.clip(np.nan_to_num(array, nan=0.0), 0.0, 1.0)


__all__ = ["load_image", "to_display"]
