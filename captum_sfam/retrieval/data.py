r"""Where a retrieval run reads its images: tensors, datasets, loaders, folders.

:class:`ImageSource` gives the run one interface over a ``(N, C, H, W)``
tensor, a map-style ``torch.utils.data.Dataset`` or a ``DataLoader``: batches
of chosen indices (so that ranks read disjoint batches and a batch's content
does not depend on the number of processes), random access to a few items
(the neighbours a batch explains), and the items' names and labels.
:class:`ImageFiles` is the dataset of a folder of image files;
:func:`image_problem` checks one file cheaply (its header, a PNG's chunks, a
JPEG's end marker) so that a run can skip, or refuse, unreadable files before
any embedding. Reading is timed as "read" on the run's clock (:mod:`.timing`).
"""

from __future__ import annotations

from collections import OrderedDict
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any, Callable, Dict, Iterator, List, Optional, Sequence, Union

import torch
from torch import Tensor
from torch.utils.data import DataLoader, Dataset, IterableDataset
from torch.utils.data.dataloader import default_collate

from .timing import section

SourceType = Union[Tensor, Dataset, DataLoader]


def _image_of(batch: Any, name: str) -> Tensor:
    """The image tensor of a collated batch: the batch itself, or its first
    element when items are ``(image, label, ...)`` tuples or ``{"image": ...}``."""
    if isinstance(batch, dict):
        batch = batch.get("image", next(iter(batch.values()), None))
    elif isinstance(batch, (tuple, list)):
        batch = batch[0] if batch else None
    if not isinstance(batch, Tensor) or not batch.is_floating_point():
        raise TypeError(
            f"{name} must give floating point image tensors (C, H, W), or "
            "(image, ...) tuples, or dicts with an 'image' key; got "
            f"{type(batch).__name__}"
        )
    return batch


def _plain(label: Any) -> Any:
    """A label as a JSON-serialisable Python value."""
    if isinstance(label, (str, int, float, bool)) or label is None:
        return label
    if hasattr(label, "item"):
        return label.item()
    return str(label)


class ImageSource:
    r"""Indexed access to the images of a query set or a gallery.

    Args:

        data (Tensor, Dataset or DataLoader): a (N, C, H, W) tensor; a
                    map-style dataset whose items are image tensors (C, H, W),
                    ``(image, label, ...)`` tuples or dicts with an ``"image"``
                    key; or a ``DataLoader`` over such a dataset, whose
                    ``batch_size`` (unless ``batch_size`` is given),
                    ``num_workers`` and ``collate_fn`` are used. Items are
                    keyed by their index in the dataset, so the loader's
                    sampler (shuffling) is not used.
        name (str): "queries" or "gallery", for error messages.
        ids (Sequence[str], optional): a name per item (a file path, say);
                    by default the dataset's ``paths`` attribute if it has
                    one, else none (items are named by index).
        labels (Sequence, optional): a label per item (str or int); by
                    default the dataset's ``labels`` attribute if it has one.
        batch_size (int, optional): images per batch.
                    Default: the loader's batch size, else 32
        num_workers (int, optional): loader workers for datasets.
                    Default: the loader's, else 0
    """

    def __init__(
        self,
        data: SourceType,
        name: str,
        ids: Optional[Sequence[Any]] = None,
        labels: Optional[Sequence[Any]] = None,
        batch_size: Optional[int] = None,
        num_workers: Optional[int] = None,
    ) -> None:
        self.name = name
        self.tensor: Optional[Tensor] = None
        self.dataset: Optional[Dataset] = None
        self.collate_fn: Callable[[List[Any]], Any] = default_collate
        loader_batch, loader_workers = None, 0
        if isinstance(data, DataLoader):
            self.collate_fn = data.collate_fn or default_collate
            loader_batch, loader_workers = data.batch_size, data.num_workers
            data = data.dataset
        if isinstance(data, Tensor):
            if data.dim() < 2 or not data.is_floating_point():
                raise TypeError(
                    f"{name} must be a floating point (N, C, H, W) tensor, got "
                    f"{data.dtype} of shape {tuple(data.shape)}"
                )
            self.tensor = data
        elif isinstance(data, IterableDataset):
            raise TypeError(
                f"{name}: iterable datasets cannot be indexed; pass a map-style "
                "Dataset (with __getitem__ and __len__)"
            )
        elif isinstance(data, Dataset) or (
            hasattr(data, "__getitem__") and hasattr(data, "__len__")
        ):
            self.dataset = data
        else:
            raise TypeError(
                f"{name} must be a Tensor, a map-style Dataset or a DataLoader, "
                f"got {type(data).__name__}"
            )
        self.length = len(data)  # type: ignore[arg-type]
        if self.length == 0:
            raise ValueError(f"{name} is empty")
        self.batch_size = int(batch_size or loader_batch or 32)
        self.num_workers = loader_workers if num_workers is None else num_workers
        #: pinned batches from the loader's workers (set for CUDA runs)
        self.pin_memory = False
        #: decoded dataset items :meth:`take` keeps (least recently used
        #: dropped first), so that the neighbours a batch reads for several
        #: maps are decoded once; 0: none
        self.cache_size = 0
        self._cache: OrderedDict = OrderedDict()
        #: id -> reason of the items :meth:`drop_unreadable` left out
        self.unreadable_ids: Dict[str, str] = {}
        if ids is None:
            ids = getattr(data, "paths", None)
        if labels is None:
            labels = getattr(data, "labels", None)
        self.ids = None if ids is None else [str(i) for i in ids]
        # plain Python values (tensor and numpy scalars too), for the JSON lines
        self.labels = None if labels is None else [_plain(label) for label in labels]
        for values, what in ((self.ids, "ids"), (self.labels, "labels")):
            if values is not None and len(values) != self.length:
                raise ValueError(
                    f"{name}: {len(values)} {what} for {self.length} items"
                )

    def __len__(self) -> int:
        return self.length

    @property
    def num_batches(self) -> int:
        return -(-self.length // self.batch_size)

    def batch_indices(self, batch: int) -> List[int]:
        """Indices of batch number ``batch`` (contiguous, batch_size long)."""
        start = batch * self.batch_size
        return list(range(start, min(start + self.batch_size, self.length)))

    def drop_unreadable(self) -> List[Dict[str, Any]]:
        r"""Leave out the items the dataset reports unreadable.

        Only datasets with an ``unreadable()`` method (:class:`ImageFiles`)
        are checked; the others are kept whole. The ids and labels are
        filtered with the items; indices then count the kept items.

        Returns:
            *list[dict]*: one ``{"source", "index", "id", "reason"}`` per item
            left out (``index`` in the source as given), in index order.

        Raises:
            ValueError: every item is unreadable.
        """
        check = getattr(self.dataset, "unreadable", None)
        if self.dataset is None or check is None:
            return []
        with section("scan"):
            bad = dict(check())
        if not bad:
            return []
        skipped = [
            {"source": self.name, "index": i, "id": self.item_id(i), "reason": why}
            for i, why in sorted(bad.items())
        ]
        self.unreadable_ids = {str(s["id"]): s["reason"] for s in skipped}
        keep = [i for i in range(self.length) if i not in bad]
        if not keep:
            raise ValueError(
                f"{self.name}: none of the {self.length} images is readable"
            )
        self.dataset = self.dataset.subset(keep)  # type: ignore[attr-defined]
        self.length = len(keep)
        if self.ids is not None:
            self.ids = [self.ids[i] for i in keep]
        if self.labels is not None:
            self.labels = [self.labels[i] for i in keep]
        return skipped

    def take(self, indices: Sequence[int]) -> Tensor:
        """The images of ``indices``, stacked (len(indices), C, H, W)."""
        with section("read"):
            if self.tensor is not None:
                return self.tensor[torch.as_tensor(list(indices), dtype=torch.long)]
            assert self.dataset is not None
            batch = self.collate_fn([self._item(i) for i in indices])
            return _image_of(batch, self.name)

    def _item(self, index: int) -> Any:
        """Dataset item ``index``, through the cache of :meth:`take`."""
        if not self.cache_size:
            return self.dataset[index]  # type: ignore[index]
        if index in self._cache:
            self._cache.move_to_end(index)
            return self._cache[index]
        item = self.dataset[index]  # type: ignore[index]
        self._cache[index] = item
        if len(self._cache) > self.cache_size:
            self._cache.popitem(last=False)
        return item

    def batches(self, numbers: Sequence[int]) -> Iterator[tuple[int, Tensor]]:
        """``(batch number, images)`` for each batch number, in order; datasets
        are read by a DataLoader with ``num_workers`` workers (the time spent
        waiting for them counts as "read")."""
        if self.tensor is not None or self.num_workers == 0:
            for number in numbers:
                yield number, self.take(self.batch_indices(number))
            return
        if not numbers:
            return
        loader = DataLoader(
            self.dataset,  # type: ignore[arg-type]
            batch_sampler=[self.batch_indices(n) for n in numbers],
            num_workers=self.num_workers,
            collate_fn=self.collate_fn,
            pin_memory=self.pin_memory,
        )
        batches = iter(loader)
        for number in numbers:
            with section("read"):
                batch = next(batches)
            yield number, _image_of(batch, self.name)

    def item_id(self, index: int) -> Union[int, str]:
        return index if self.ids is None else self.ids[index]

    def item_label(self, index: int) -> Any:
        return None if self.labels is None else self.labels[index]


#: bytes a JPEG's end-of-image marker may sit before the end of the file
_JPEG_TAIL = 64


def _decodes(path: Path) -> bool:
    from PIL import Image

    try:
        with Image.open(path) as image:
            image.load()
        return True
    except Exception:  # noqa: BLE001 - any failure to decode is the answer
        return False


def image_problem(path: Union[str, Path]) -> Optional[str]:
    r"""Why an image file cannot be read, found cheaply; None when it can.

    An empty file is refused at once. A JPEG (its start-of-image bytes) with
    its end-of-image marker in its last bytes is accepted without Pillow; one
    without it (truncated) is decoded, to be sure. Every other file goes
    through Pillow's header reader (a text file named ``.jpg`` fails here)
    and ``verify`` (a PNG's chunks and checksums up to its end: a truncated
    PNG fails). Nothing else is decoded.

    Args:

        path (str or Path): the image file.

    Returns:
        *str* or *None*: the reason, or None for a readable image.
    """
    from PIL import Image

    path = Path(path)
    try:
        size = path.stat().st_size
        if size == 0:
            return "empty file"
        with open(path, "rb") as handle:
            head = handle.read(3)
            handle.seek(max(0, size - _JPEG_TAIL))
            tail = handle.read()
        if head == b"\xff\xd8\xff":
            if b"\xff\xd9" in tail or _decodes(path):
                return None
            return "truncated JPEG (no end-of-image marker, does not decode)"
        with Image.open(path) as image:
            image.verify()
    except Exception as error:  # noqa: BLE001 - reported, with its kind
        return f"{type(error).__name__}: {error}"
    return None


class ImageFiles(Dataset):
    r"""A dataset of image files: item ``i`` is ``preprocess(paths[i])``.

    Args:

        paths (Sequence[str or Path]): the image files.
        preprocess (Callable): path -> model input (C, H, W) or (1, C, H, W).
        labels (Sequence, optional): a label per file.
                    Default: None

    ``ImageFiles.from_folder(root, preprocess)`` lists the images under
    ``root`` recursively (sorted) and takes each file's top-level folder
    below ``root`` as its label when every file sits in such a folder.
    """

    def __init__(
        self,
        paths: Sequence[Union[str, Path]],
        preprocess: Callable[[Path], Tensor],
        labels: Optional[Sequence[Any]] = None,
    ) -> None:
        self.paths = [Path(p) for p in paths]
        self.preprocess = preprocess
        self.labels = None if labels is None else list(labels)

    @staticmethod
    def folder_labels(root: Union[str, Path], paths: Sequence[Path]) -> Optional[list]:
        """Each file's top-level folder under ``root``, or None when a file
        lies directly in ``root`` (no labels then)."""
        root = Path(root)
        labels = []
        for path in paths:
            parts = Path(path).relative_to(root).parts
            if len(parts) < 2:
                return None
            labels.append(parts[0])
        return labels

    @classmethod
    def from_folder(
        cls,
        root: Union[str, Path],
        preprocess: Callable[[Path], Tensor],
        find: Optional[Callable[[Path], Sequence[Path]]] = None,
    ) -> ImageFiles:
        root = Path(root)
        if find is None:
            suffixes = {".jpg", ".jpeg", ".png", ".bmp", ".gif", ".tif", ".tiff"}
            paths = sorted(
                p
                for p in root.rglob("*")
                if p.is_file() and p.suffix.lower() in suffixes
            )
        else:
            paths = list(find(root))
        return cls(paths, preprocess, cls.folder_labels(root, paths))

    def __len__(self) -> int:
        return len(self.paths)

    def __getitem__(self, index: int) -> Tensor:
        image = self.preprocess(self.paths[index])
        return image[0] if image.dim() == 4 else image

    def unreadable(self, threads: int = 4) -> List[tuple]:
        """``(index, reason)`` of every file ``image_problem`` rejects
        (headers read by ``threads`` threads)."""
        with ThreadPoolExecutor(max_workers=threads) as pool:
            problems = list(pool.map(image_problem, self.paths))
        return [(i, why) for i, why in enumerate(problems) if why is not None]

    def subset(self, keep: Sequence[int]) -> ImageFiles:
        """The files of ``keep`` (indices), with their labels."""
        labels = None if self.labels is None else [self.labels[i] for i in keep]
        return ImageFiles([self.paths[i] for i in keep], self.preprocess, labels)
