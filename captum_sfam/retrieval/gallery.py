r"""The gallery's embedding table, checkpointed in chunks and resumed.

The gallery's batches are grouped in chunks of at most ``CHUNK_ROWS`` rows
(whole batches; smaller when the ranks would otherwise get uneven shares);
the chunks are embedded round-robin over the ranks, and each is written, as
soon as it is done, to ``gallery/batches-FFFFFF-CCCCCC.safetensors`` (C
batches from batch F) (atomically, with
its checksum). A rerun after a crash keeps every whole chunk and embeds the
rest; a damaged chunk (truncated, another length, a checksum that differs)
is named in a warning and embedded again. Once every chunk exists, the ranks
read them into one (M, D) table (memory: the table and one chunk), rank 0
writes ``gallery_embeddings.safetensors`` and removes the chunks.
"""

from __future__ import annotations

import warnings
from pathlib import Path
from typing import List, Optional, Tuple

import torch
from torch import Tensor

from ..similarity import embed
from . import distributed as dist_utils
from .settings import RunSettings
from .store import (
    EMBEDDINGS,
    GALLERY_DIR,
    check_tensors,
    chunk_name,
    load_tensor,
    save_tensors,
)
from .timing import section

#: gallery rows per checkpoint chunk, at most
CHUNK_ROWS = 4096


def embed_checked(model: torch.nn.Module, images: Tensor, name: str) -> Tensor:
    """``embed(model, images)`` in float32, timed as "embed"; NaN or inf is a
    ValueError naming ``name``."""
    with section("embed"):
        embeddings = embed(model, images).float()
        if not bool(torch.isfinite(embeddings).all()):
            raise ValueError(f"the model gives NaN or inf embeddings for {name}")
    return embeddings


def repaired(settings: RunSettings, path: Path, problem: str, action: str) -> None:
    """Warn that ``path`` was damaged and note it for ``summary.json``."""
    warnings.warn(f"{path}: {problem}; {action}", UserWarning, stacklevel=3)
    entry = {"file": str(path.relative_to(settings.out)), "problem": problem}
    settings.notes.setdefault("repaired", []).append(entry)


def chunk_batches(settings: RunSettings) -> int:
    """Gallery batches per chunk: ``CHUNK_ROWS`` rows, at most an even share
    of the batches per rank."""
    batches, world = settings.gallery.num_batches, settings.context.world_size
    return max(1, min(CHUNK_ROWS // settings.batch_size, -(-batches // world)))


def _chunk(settings: RunSettings, chunk: int, per: int) -> Tuple[List[int], Path]:
    """The batch numbers of ``chunk`` and its file."""
    last = min(settings.gallery.num_batches, (chunk + 1) * per)
    numbers = list(range(chunk * per, last))
    return numbers, settings.out / chunk_name(numbers[0], len(numbers))


def _embed_chunk(settings: RunSettings, numbers: List[int], path: Path) -> None:
    gallery = settings.gallery
    parts = []
    with torch.no_grad():
        for _, images in gallery.batches(numbers):
            images = images.to(settings.device, non_blocking=True)
            parts.append(embed_checked(settings.model, images, "the gallery").cpu())
    metadata = {"first_batch": str(numbers[0]), "batches": str(len(numbers))}
    save_tensors(path, {"embeddings": torch.cat(parts)}, metadata=metadata)


def _whole_table(settings: RunSettings) -> Optional[Tensor]:
    """Rank 0: the table of an earlier run when resuming and it is whole (a
    damaged one is named, removed and None returned); None elsewhere."""
    path = settings.out / EMBEDDINGS
    if not (settings.context.is_main and settings.resume and path.is_file()):
        return None
    problem = check_tensors(path, {"embeddings": len(settings.gallery)})
    if problem is not None:
        repaired(settings, path, problem, "embedding the gallery again")
        path.unlink()
        return None
    return load_tensor(path, "embeddings")


def _progress(settings: RunSettings, chunks: List[int]):
    if not settings.show_progress:
        return chunks
    try:
        from tqdm.auto import tqdm
    except ImportError:
        return chunks
    return tqdm(chunks, desc="gallery", unit="chunk")


def embed_gallery(settings: RunSettings) -> Tensor:
    r"""The gallery's embedding table, the same on every rank.

    Read from ``gallery_embeddings.safetensors`` when resuming a run that
    wrote it whole; else this rank's missing or damaged chunks are embedded
    and written, and the table read from the chunks (see the module
    docstring).

    Returns:
        *Tensor*: (M, D) float32 embeddings on ``settings.device``.

    Raises:
        ValueError: the model gives NaN or inf embeddings.
    """
    context, out = settings.context, settings.out
    cached = _whole_table(settings)
    if context.is_main and cached is not None:
        _remove_chunks(out)
    if dist_utils.broadcast_flag(context, cached is not None):
        width = dist_utils.all_max(context, 0 if cached is None else cached.shape[1])
        table = dist_utils.broadcast_tensor(
            context, cached, (len(settings.gallery), width), torch.float32
        )
        return table.to(settings.device)
    per = chunk_batches(settings)
    count = -(-settings.gallery.num_batches // per)
    for chunk in _progress(settings, context.mine(count)):
        numbers, path = _chunk(settings, chunk, per)
        if settings.resume and path.is_file():
            rows = sum(len(settings.gallery.batch_indices(b)) for b in numbers)
            problem = check_tensors(path, {"embeddings": rows})
            if problem is None:
                continue
            repaired(settings, path, problem, "embedding the chunk again")
        _embed_chunk(settings, numbers, path)
    dist_utils.barrier(context)
    table: Optional[Tensor] = None
    for chunk in range(count):
        numbers, path = _chunk(settings, chunk, per)
        rows = load_tensor(path, "embeddings")
        if table is None:
            table = rows.new_empty(len(settings.gallery), rows.shape[1])
        start = numbers[0] * settings.batch_size
        table[start : start + rows.shape[0]] = rows
    assert table is not None
    dist_utils.barrier(context)  # every rank has read the chunks
    if context.is_main:
        save_tensors(out / EMBEDDINGS, {"embeddings": table})
        _remove_chunks(out)
    return table.to(settings.device)


def _remove_chunks(out: Path) -> None:
    """Delete the chunks once the whole table is written (this run's, another
    layout's, or those a run killed right after writing the table left)."""
    folder = out / GALLERY_DIR
    for leftover in folder.glob("batches-*.safetensors"):
        leftover.unlink()
    if folder.is_dir() and not any(folder.iterdir()):
        folder.rmdir()


__all__ = ["CHUNK_ROWS", "chunk_batches", "embed_checked", "embed_gallery"]
