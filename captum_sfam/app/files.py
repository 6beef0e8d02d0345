r"""Image files for the command line: find them in folders, read them.

:func:`load_image` is :func:`captum_sfam.images.load_image` with its errors
(a missing file or extra, an unreadable image, a bad size) reported as one-line
:class:`~captum_sfam.app.errors.CLIError`; :func:`find_images` lists the image
files of a folder.
"""

from __future__ import annotations

from pathlib import Path
from typing import List, Union

from torch import Tensor

from .. import images
from .args import INPUT_SIZE
from .errors import CLIError

PathLike = Union[str, Path]

#: file extensions :func:`find_images` lists (lower case)
IMAGE_EXTENSIONS = frozenset(
    {
        ".png",
        ".jpg",
        ".jpeg",
        ".bmp",
        ".gif",
        ".tif",
        ".tiff",
        ".webp",
        ".ppm",
        ".pgm",
        ".pbm",
        ".pnm",
    }
)


def load_image(path: PathLike, size: int = INPUT_SIZE) -> Tensor:
    r"""Reads an image file into a (3, size, size) tensor in [0, 1].

    Any image Pillow reads (8- and 16-bit, greyscale, palette, CMYK, alpha
    composited on white, EXIF orientation applied), resized to
    ``size x size``, not normalised: see :func:`captum_sfam.images.load_image`.

    Args:
        path (str or Path): the image file.
        size (int): the side of the output, in pixels. Default: 224

    Returns:
        Tensor (3, size, size), float32 in [0, 1].

    Raises:
        CLIError: pillow is not installed, there is no such file, the file is
                    not an image, or ``size`` is not a positive int.
    """
    try:
        return images.load_image(path, size)
    except (ImportError, OSError, ValueError) as error:
        raise CLIError(str(error)) from error


def find_images(folder: PathLike) -> List[Path]:
    r"""The image files under ``folder``, recursively, sorted by path.

    Args:
        folder (str or Path): a folder.

    Returns:
        list of Path: the files whose extension (any case) is in
        :data:`IMAGE_EXTENSIONS`; hidden files and folders are skipped.

    Raises:
        CLIError: ``folder`` is not a folder.
    """
    folder = Path(folder)
    if not folder.is_dir():
        raise CLIError(f"no such folder: {folder}")
    return sorted(
        p
        for p in folder.rglob("*")
        if p.is_file()
        and p.suffix.lower() in IMAGE_EXTENSIONS
        and not any(part.startswith(".") for part in p.relative_to(folder).parts)
    )


__all__ = ["IMAGE_EXTENSIONS", "find_images", "load_image"]
