"""Pictures of GETok answers: the image, the grid, the predicted tokens, predicted and GT masks.

``render_overlay`` returns a PIL image; ``write_report`` writes a static HTML page of overlays.
Colours: predictions in orange (masks filled, boxes solid, seg points as dots with their cell,
optionally the grid tokens' cells shaded), ground truth in green (mask outlines, boxes dashed),
refinement moves in cyan (an arrow from each anchor before a round to where its offset put it, a
cross where a point was deleted). Coordinates in are normalized.
"""

from __future__ import annotations

import html
import os
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw, ImageFont

from ..codec.instance import InstanceCells
from ..codec.vocab import GetokVocab

PRED = (255, 140, 0)
GT = (40, 200, 80)
GRID = (255, 255, 255)
MOVE = (0, 200, 255)
#: Opacity (0-255) of a shaded token cell.
CELL_ALPHA = 96


def _outline(mask: np.ndarray) -> np.ndarray:
    from scipy import ndimage

    return mask & ~ndimage.binary_erosion(mask, border_value=0)


def _upscale(img: Image.Image, min_side: int) -> tuple[Image.Image, float]:
    s = max(1.0, min_side / min(img.size))
    if s > 1:
        img = img.resize((round(img.size[0] * s), round(img.size[1] * s)), Image.NEAREST)
    return img, s


def token_cells(cells: InstanceCells) -> list[tuple[int, int]]:
    """Every grid cell (x, y) an instance's tokens name: box corners, seg points, the point,
    polyline and polygon vertices (repeats kept once, in that order)."""
    out = list(cells.box or ()) + list(cells.points) + ([cells.point] if cells.point is not None else [])
    out += list(cells.polyline or ()) + list(cells.polygon or ())
    return list(dict.fromkeys(tuple(c) for c in out))


def render_overlay(image: np.ndarray, vocab: GetokVocab, instances=(), pred_masks=(), gt_masks=(),
                   gt_boxes=(), caption: str | None = None, grid: bool = True, min_side: int = 384,
                   cells=(), moves=(), deleted=()) -> Image.Image:
    """An RGB picture: ``image`` (H, W, 3 uint8) upscaled so its short side is at least
    ``min_side``, the n x n grid, predicted masks (bool (H, W)) and instances (boxes, seg points
    labelled with their cell, points, lines, polygons), GT masks (outlines) and boxes (dashed).
    ``cells``: ``InstanceCells`` whose token cells are shaded (orange, ``CELL_ALPHA``) and
    outlined; ``moves``: ((u0, v0), (u1, v1)) refinement moves drawn as cyan arrows;
    ``deleted``: (u, v) of deleted points, drawn as cyan crosses."""
    base = Image.fromarray(np.asarray(image, np.uint8)).convert("RGB")
    rgb = np.asarray(base).astype(np.float32)
    for m in pred_masks:
        if m is not None and np.any(m):
            m = np.asarray(m, bool)
            rgb[m] = 0.55 * rgb[m] + 0.45 * np.array(PRED, np.float32)
    for m in gt_masks:
        if m is not None and np.any(m):
            rgb[_outline(np.asarray(m, bool))] = GT
    img, s = _upscale(Image.fromarray(rgb.astype(np.uint8)), min_side)
    W, H = img.size
    draw = ImageDraw.Draw(img, "RGBA")
    font = ImageFont.load_default()
    n = vocab.grid_size
    if grid:
        for k in range(1, n):
            draw.line([(k * W / n, 0), (k * W / n, H)], fill=GRID + (40,))
            draw.line([(0, k * H / n), (W, k * H / n)], fill=GRID + (40,))

    def px(uv):
        return uv[0] * W, uv[1] * H

    for c in cells:
        for x, y in token_cells(c):
            draw.rectangle([x * W / n, y * H / n, (x + 1) * W / n - 1, (y + 1) * H / n - 1],
                           fill=PRED + (CELL_ALPHA,), outline=PRED + (255,))

    for b in gt_boxes:
        if b is not None:
            x1, y1 = px(b[:2])
            x2, y2 = px(b[2:])
            for t in np.arange(0, 1, 0.04)[::2]:  # dashed
                draw.line([(x1 + (x2 - x1) * t, y1), (x1 + (x2 - x1) * (t + 0.04), y1)], fill=GT, width=2)
                draw.line([(x1 + (x2 - x1) * t, y2), (x1 + (x2 - x1) * (t + 0.04), y2)], fill=GT, width=2)
                draw.line([(x1, y1 + (y2 - y1) * t), (x1, y1 + (y2 - y1) * (t + 0.04))], fill=GT, width=2)
                draw.line([(x2, y1 + (y2 - y1) * t), (x2, y1 + (y2 - y1) * (t + 0.04))], fill=GT, width=2)
    r = max(3, min(W, H) // 100)
    for inst in instances:
        if inst.box is not None:
            draw.rectangle([px(inst.box[:2]), px(inst.box[2:])], outline=PRED, width=2)
        for p in list(inst.points) + ([inst.point] if inst.point is not None else []):
            x, y = px(p)
            draw.ellipse([x - r, y - r, x + r, y + r], fill=PRED + (255,), outline=(0, 0, 0))
            cx, cy = vocab.point_cell(p)
            draw.text((x + r + 1, y - r - 1), f"{cx},{cy}", fill=(255, 255, 255), font=font,
                      stroke_width=1, stroke_fill=(0, 0, 0))
        for line, closed in ((inst.polyline, False), (inst.polygon, True)):
            if line:
                pts = [px(p) for p in line] + ([px(line[0])] if closed else [])
                draw.line(pts, fill=PRED, width=2)
    _draw_moves(draw, [(px(a), px(b)) for a, b in moves], [px(p) for p in deleted], r)
    if caption:
        text = caption if len(caption) <= 140 else caption[:137] + "..."
        draw.rectangle([0, H - 14, W, H], fill=(0, 0, 0, 160))
        draw.text((3, H - 13), text, fill=(255, 255, 255), font=font)
    return img


def _draw_moves(draw, moves, deleted, r: int) -> None:
    """Arrows (pixel start -> end, head at the end) and crosses (pixel centres) in ``MOVE``."""
    for (x0, y0), (x1, y1) in moves:
        draw.line([(x0, y0), (x1, y1)], fill=MOVE, width=2)
        d = float(np.hypot(x1 - x0, y1 - y0))
        if d < 1e-6:
            continue
        ux, uy = (x1 - x0) / d, (y1 - y0) / d
        head = min(float(r + 3), d)
        back = (x1 - ux * head, y1 - uy * head)
        draw.polygon([(x1, y1), (back[0] - uy * head / 2, back[1] + ux * head / 2),
                      (back[0] + uy * head / 2, back[1] - ux * head / 2)], fill=MOVE)
    for x, y in deleted:
        draw.line([(x - r, y - r), (x + r, y + r)], fill=MOVE, width=2)
        draw.line([(x - r, y + r), (x + r, y - r)], fill=MOVE, width=2)


def write_report(out_dir, sections: list[tuple[str, list[dict]]], title: str = "GETok evaluation",
                 summary_html: str = "") -> Path:
    """Write ``out_dir/index.html``: for each (heading, entries) section a grid of figures.
    An entry has ``image`` (a PNG path relative to ``out_dir``), ``caption`` and optional
    ``details`` (text shown under it, e.g. the raw answer)."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    parts = [f"<!doctype html><meta charset='utf-8'><title>{html.escape(title)}</title>",
             "<style>body{font:14px sans-serif;margin:16px}figure{display:inline-block;vertical-align:top;"
             "margin:6px;width:400px}img{width:400px}figcaption{font-size:12px}pre{white-space:pre-wrap;"
             "font-size:11px;background:#f4f4f4;padding:4px;max-height:120px;overflow:auto}"
             "table{border-collapse:collapse}td,th{border:1px solid #ccc;padding:2px 6px}</style>",
             f"<h1>{html.escape(title)}</h1>", summary_html,
             "<p>Predictions orange (masks filled, boxes solid, seg points labelled with their cell); "
             "ground truth green (mask outlines, dashed boxes).</p>"]
    for heading, entries in sections:
        parts.append(f"<h2>{html.escape(heading)}</h2>")
        for e in entries:
            rel = os.path.relpath(out / e["image"], out) if not os.path.isabs(e["image"]) else e["image"]
            parts.append(f"<figure><img src='{html.escape(rel)}' loading='lazy'>"
                         f"<figcaption>{html.escape(e.get('caption', ''))}</figcaption>"
                         + (f"<pre>{html.escape(e['details'])}</pre>" if e.get("details") else "")
                         + "</figure>")
    path = out / "index.html"
    path.write_text("\n".join(parts) + "\n", encoding="utf-8")
    return path


__all__ = ["render_overlay", "token_cells", "write_report", "PRED", "GT", "MOVE", "CELL_ALPHA"]
