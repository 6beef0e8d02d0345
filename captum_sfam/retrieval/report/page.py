r"""The rows of the report: one per query, with its pictures and pair files."""

from __future__ import annotations

import html
from pathlib import Path
from typing import Any, Dict, List, Optional, Set
from urllib.parse import quote

import torch

from ..store import load_maps
from .order import sort_keys
from .pairs import pair_id, write_pair
from .pictures import Pictures, overlay, save_png


def caption(lines: List[Any]) -> str:
    return "<br>".join(html.escape(str(line)) for line in lines if line != "")


def img(src: str, alt: str, cls: str, height: Optional[int] = None) -> str:
    size = f' height="{height}"' if height else ""
    return (
        f'<img class="{cls}" src="{quote(src)}" alt="{html.escape(alt)}" '
        f'title="{html.escape(alt)}"{size}>'
    )


def _attribute(value: Optional[float]) -> str:
    return "" if value is None else repr(value)


class Rows:
    """Draws the rows of the shown queries; each gallery picture is saved
    once, as ``thumbs/gNNNNNN.png``."""

    def __init__(self, out: Path, pictures: Pictures) -> None:
        self.out, self.pictures = out, pictures
        self.saved: Set[int] = set()

    def gallery_thumb(self, index: int, picture: Optional[torch.Tensor] = None) -> str:
        name = f"thumbs/g{index:06d}.png"
        if index not in self.saved:
            if picture is None:
                picture = self.pictures.items([index])[0]
            save_png(overlay(picture, None), self.out / name)
            self.saved.add(index)
        return name

    def row(self, record: Dict[str, Any], place: int) -> str:
        r"""The ``<tr>`` of one query, ``place`` its position worst first."""
        out, q = self.out, int(record["query"])
        neighbours = record["neighbours"]
        maps = load_maps(out, record, dtype=torch.float32)
        query_picture = self.pictures.query(q)
        items = self.pictures.items([int(n["index"]) for n in neighbours])
        name = f"q{q:06d}"
        query_file = f"thumbs/{name}.png"
        save_png(overlay(query_picture, None), out / query_file)
        label = record.get("label")
        keys = sort_keys(record)
        wrong = record.get("wrong_above_true", {})
        first = record.get("first_true")
        notes = [f"query {q}", record.get("id", ""), "" if label is None else label]
        if keys["first_true_rank"] is not None:
            notes.append(f"first true match: #{keys['first_true_rank']}")
        if keys["ap"] is not None:
            notes.append(f"AP {keys['ap']:.3f}")
        if keys["margin"] is not None:
            notes.append(f"margin #1-#2 {keys['margin']:.4g}")
        refusal = wrong.get("refusal")
        note = (
            f'<div class="note">no contrastive map: {html.escape(refusal)}</div>'
            if refusal
            else ""
        )
        cells = [
            '<td class="query-cell"><figure>'
            + img(query_file, f"query {q}", "query")
            + f'<figcaption class="keys">{caption(notes)}</figcaption></figure>'
            + note
            + "</td>"
        ]
        for j, item in enumerate(neighbours):
            cells.append(
                self._neighbour(record, j, item, items[j], query_picture, maps, first)
            )
        missed = record.get("missed", [])
        if missed:
            cells.append(self._missed(missed, record.get("relevant")))
        if "contrast" in maps:
            c_file = f"thumbs/{name}-contrast.png"
            save_png(overlay(query_picture, maps["contrast"]), out / c_file)
            cells.append(
                '<td class="contrast"><figure>'
                + img(c_file, f"query {q}: rank 1 rather than rank 2", "contrast-map")
                + "<figcaption>why #1 rather than #2</figcaption></figure></td>"
            )
        data = " ".join(
            f'data-{key}="{_attribute(value)}"' for key, value in keys.items()
        )
        return (
            f'<tr class="query" id="{name}" data-worst="{place}" {data}>'
            + "".join(cells)
            + "</tr>"
        )

    def _neighbour(self, record, j, item, picture, query_picture, maps, first) -> str:
        out, q, rank = self.out, int(record["query"]), int(item["rank"])
        name = f"q{q:06d}"
        n_file = f"thumbs/{name}-r{rank:02d}-neighbour.png"
        q_file = f"thumbs/{name}-r{rank:02d}-query.png"
        save_png(overlay(picture, maps["neighbours"][j]), out / n_file)
        save_png(overlay(query_picture, maps["query"][j]), out / q_file)
        label = record.get("label")
        verdict = ""
        if label is not None and "label" in item:
            verdict = " hit" if item["label"] == label else " miss"
        parts = [
            img(n_file, f"rank {rank} neighbour {item['index']} with its map",
                "neighbour-map"),
            img(q_file, f"query {q} with its map for rank {rank}", "query-map"),
        ]  # fmt: skip
        lines = [
            f"#{rank}  similarity {item['similarity']:.4f}",
            item.get("id", f"gallery {item['index']}"),
            item.get("label", ""),
        ]
        wrong = record.get("wrong_above_true", {})
        ranks = wrong.get("ranks", [])
        if "wrong_contrast" in maps and rank in ranks:
            true = wrong["true"][ranks.index(rank)] if "true" in wrong else first
            w_file = f"thumbs/{name}-r{rank:02d}-wrong.png"
            save_png(overlay(query_picture, maps["wrong_contrast"][j]), out / w_file)
            why = f"why #{rank} (wrong) rather than the true #{true['rank']}"
            parts.append(img(w_file, f"query {q}: {why}", "wrong-contrast-map"))
            lines.append(why)
        button = ""
        if "points" in maps:
            identifier = write_pair(out, q, rank, maps["points"][j])
            title = f"query {q} and its #{rank} neighbour {item.get('id', '')}"
            button = (
                f'<button class="pair-link" type="button" data-pair="{identifier}" '
                f'data-query="thumbs/{name}.png" '
                f'data-neighbour="{self.gallery_thumb(int(item["index"]), picture)}" '
                f'data-title="{html.escape(title)}">point to point</button>'
            )
        return (
            f'<td class="neighbour{verdict}" id="{pair_id(q, rank)}"><figure>'
            + "".join(parts)
            + f"<figcaption>{caption(lines)}</figcaption></figure>{button}</td>"
        )

    def _missed(self, missed: List[Dict[str, Any]], relevant: Optional[int]) -> str:
        figures = []
        indices = [int(item["index"]) for item in missed]
        fresh = [i for i in indices if i not in self.saved]
        for index, picture in zip(fresh, self.pictures.items(fresh)):
            self.gallery_thumb(index, picture)
        for item in missed:
            thumb = self.gallery_thumb(int(item["index"]))
            alt = f"missed true match #{item['rank']} {item.get('id', '')}"
            lines = ["#" + str(item["rank"]), format(item["similarity"], ".3f")]
            figures.append(
                "<figure>"
                + img(thumb, alt, "missed-match", height=64)
                + f"<figcaption>{caption(lines)}</figcaption></figure>"
            )
        head = f"true matches missed (of {relevant}):" if relevant else "missed:"
        body = "".join(figures)
        return f'<td class="missed"><div>{html.escape(head)}</div>{body}</td>'


__all__ = ["Rows", "caption", "img"]
