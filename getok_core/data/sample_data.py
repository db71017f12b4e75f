"""The bundled sample dataset, generated deterministically at run time (no binaries in git).

``write_sample_dataset(out_dir, seed=0)`` draws 36 small RGB PNG images with numpy and PIL and
writes their annotations in the real formats the loaders read::

    out_dir/
      README.txt                      what is here
      images/train2014/getok_sample_NNN.png   30 images of shapes on textured backgrounds
      images/lanes/getok_lane_NNN.png          6 road images with lane markings
      refcoco/instances.json          COCO instances (polygons, RLE, one crowd RLE per few images)
      refcoco/refs(unc).p             RefCOCO refs (pickle): one ref per object
      grefcoco/instances.json         the same instances
      grefcoco/grefs(unc).json        gRefCOCO refs: multi-target and no-target expressions
      points.json                     Pixmo-points-style records (pixels)
      lanes.json                      GETok lanes records (pixel polylines)

Objects include thin lines (2 px wide), concave shapes (L, C) and shapes with holes (rings,
square frames); every mask is rasterized first and the image painted from it, so pixels and
annotations agree exactly. The same seed gives byte-identical files (same numpy / Pillow / zlib).
``getok_core.data.loaders.load_dataset("sample", out_dir)`` reads it.
"""

from __future__ import annotations

import json
import math
import os
import pickle

import numpy as np

from .masks import encode_rle, polygons_to_mask, uncompressed_counts

N_SHAPE_IMAGES = 30
N_LANE_IMAGES = 6
SIZES = ((160, 120), (192, 144), (224, 168), (256, 192), (288, 216), (320, 240))
COLORS = {
    "red": (220, 40, 40), "green": (40, 170, 60), "blue": (40, 80, 220), "yellow": (235, 210, 40),
    "purple": (140, 60, 180), "orange": (245, 140, 30), "white": (245, 245, 245),
}
#: Shape kinds: (category id, name, plural, annotation kind, supercategory).
SHAPES = {
    "circle": (1, "circle", "circles", "polygon", "convex"),
    "square": (2, "square", "squares", "polygon", "convex"),
    "triangle": (3, "triangle", "triangles", "polygon", "convex"),
    "lshape": (4, "L shape", "L shapes", "polygon", "concave"),
    "cshape": (5, "C shape", "C shapes", "polygon", "concave"),
    "ring": (6, "ring", "rings", "rle", "holes"),
    "frame": (7, "square frame", "square frames", "rle", "holes"),
    "line": (8, "thin line", "thin lines", "rle", "thin"),
}
DOTS_CATEGORY = 9
SHAPE_ORDER = tuple(SHAPES)
IMAGE_DIR = "images/train2014"
LANE_DIR = "images/lanes"
N_VAL = 6  # the last N_VAL shape images and the last 2 lane images are "val"


# ---------------------------------------------------------------------- masks
def _rle(mask: np.ndarray) -> dict:
    return encode_rle(mask)


def _polygon_mask(flat: list[float], w: int, h: int) -> np.ndarray:
    return polygons_to_mask([flat], h, w)


def _shape_geometry(kind: str, cx: float, cy: float, s: float, rng, w: int, h: int):
    """(mask, polygon or None) of one object of ``kind`` centred at (cx, cy), about s px."""
    yy, xx = np.mgrid[0:h, 0:w]
    px, py = xx + 0.5, yy + 0.5
    r = s / 2
    if kind in ("circle", "square", "triangle", "lshape", "cshape"):
        x0, y0, x1, y1 = cx - r, cy - r, cx + r, cy + r
        t = s * 0.35
        if kind == "circle":
            verts = [(cx + r * math.cos(2 * math.pi * k / 24), cy + r * math.sin(2 * math.pi * k / 24))
                     for k in range(24)]
        elif kind == "square":
            q = r * 0.85
            verts = [(cx - q, cy - q), (cx + q, cy - q), (cx + q, cy + q), (cx - q, cy + q)]
        elif kind == "triangle":
            verts = [(cx, y0), (x1, y1), (x0, y1)]
        elif kind == "lshape":
            verts = [(x0, y0), (x0 + t, y0), (x0 + t, y1 - t), (x1, y1 - t), (x1, y1), (x0, y1)]
        else:  # C shape
            verts = [(x1, y0), (x0, y0), (x0, y1), (x1, y1), (x1, y1 - t), (x0 + t, y1 - t),
                     (x0 + t, y0 + t), (x1, y0 + t)]
        flat = [round(c, 1) for v in verts for c in v]
        return _polygon_mask(flat, w, h), flat
    if kind == "ring":
        d = np.hypot(px - cx, py - cy)
        return (d <= r) & (d >= r * 0.55), None
    if kind == "frame":
        q = r * 0.9
        b = max(3.0, s * 0.22)
        outer = (np.abs(px - cx) <= q) & (np.abs(py - cy) <= q)
        inner = (np.abs(px - cx) <= q - b) & (np.abs(py - cy) <= q - b)
        return outer & ~inner, None
    # a thin line, exactly 2 px wide: horizontal, vertical or diagonal
    m = np.zeros((h, w), bool)
    orient = int(rng.integers(0, 3))
    x_start, x_end = int(round(cx - r)), int(round(cx + r))
    y_start, y_end = int(round(cy - r)), int(round(cy + r))
    if orient == 0:
        y = int(round(cy)) - 1
        m[y:y + 2, x_start:x_end] = True
    elif orient == 1:
        x = int(round(cx)) - 1
        m[y_start:y_end, x:x + 2] = True
    else:
        for x in range(x_start, x_end):
            y = y_start + (x - x_start) * (y_end - y_start) // max(1, x_end - x_start)
            m[y:y + 2, x] = True
    return m, None


# ---------------------------------------------------------------------- images
def _background(rng, w: int, h: int) -> np.ndarray:
    """A muted textured background (stripes, checker, gradient or blotches) with mild noise."""
    yy, xx = np.mgrid[0:h, 0:w].astype(float)
    base = rng.uniform(70, 150, size=3)
    kind = int(rng.integers(0, 4))
    if kind == 0:
        period = rng.uniform(8, 20)
        angle = rng.uniform(0, math.pi)
        tex = np.sin((xx * math.cos(angle) + yy * math.sin(angle)) * 2 * math.pi / period)
    elif kind == 1:
        cell = int(rng.integers(8, 20))
        tex = (((xx // cell) + (yy // cell)) % 2) * 2 - 1
    elif kind == 2:
        tex = (xx / w + yy / h) - 1
    else:
        tex = np.sin(xx / rng.uniform(9, 15)) * np.cos(yy / rng.uniform(9, 15))
    amp = rng.uniform(10, 25)
    img = base[None, None, :] + amp * tex[..., None] + rng.normal(0, 4, size=(h, w, 3))
    return np.clip(img, 0, 255)


def _paint(img: np.ndarray, mask: np.ndarray, color, rng) -> None:
    n = int(mask.sum())
    img[mask] = np.clip(np.asarray(color, float)[None, :] + rng.normal(0, 5, size=(n, 3)), 0, 255)


def _save_png(arr: np.ndarray, path: str) -> None:
    from PIL import Image

    os.makedirs(os.path.dirname(path), exist_ok=True)
    Image.fromarray(np.asarray(arr, np.uint8), "RGB").save(path, format="PNG", compress_level=6)


# ---------------------------------------------------------------------- expressions
def _hpos(cx: float, w: int) -> str:
    return "on the left" if cx < w / 3 else "on the right" if cx > 2 * w / 3 else "in the middle"


def _vpos(cy: float, h: int) -> str:
    return "at the top" if cy < h / 2 else "at the bottom"


def _sentences(texts: list[str], next_id: list[int]) -> tuple[list[dict], list[int]]:
    out, ids = [], []
    for t in texts:
        sid = next_id[0]
        next_id[0] += 1
        out.append({"tokens": t.split(), "raw": t[:1].upper() + t[1:], "sent_id": sid, "sent": t})
        ids.append(sid)
    return out, ids


def _nearest_pixel(mask: np.ndarray, cx: float, cy: float) -> tuple[float, float]:
    """Centre of the mask pixel nearest to (cx, cy) (for rings: on the ring, not in the hole)."""
    ys, xs = np.nonzero(mask)
    k = int(np.argmin((xs + 0.5 - cx) ** 2 + (ys + 0.5 - cy) ** 2))
    return float(xs[k]) + 0.5, float(ys[k]) + 0.5


# ---------------------------------------------------------------------- the dataset
def _shape_images(rng, out_dir: str):
    """The shape images and their COCO images / annotations, RefCOCO and gRefCOCO refs and point
    rows. The draws from ``rng`` happen in one fixed order (objects, dots, absent object), so a
    seed gives the same bytes."""
    images, anns, refs, grefs, points = [], [], [], [], []
    sent_id = [0]
    for i in range(N_SHAPE_IMAGES):
        w, h = SIZES[int(rng.integers(0, len(SIZES)))]
        split = "val" if i >= N_SHAPE_IMAGES - N_VAL else "train"
        img = _background(rng, w, h)
        image_id = i + 1
        fname = f"getok_sample_{i:03d}.png"
        images.append({"id": image_id, "file_name": fname, "width": w, "height": h})
        objs, used, free_cell = _draw_objects(rng, i, img)
        _annotate(rng, i, image_id, img, objs, free_cell, anns)
        _save_png(img, os.path.join(out_dir, IMAGE_DIR, fname))
        image = {"id": image_id, "file": fname, "split": split, "size": (w, h)}
        _refcoco_refs(image, objs, sent_id, refs, points)
        _grefcoco_refs(rng, i, image, objs, used, sent_id, grefs, points)
    return images, anns, refs, grefs, points


def _draw_objects(rng, i: int, img: np.ndarray):
    """Paint 2-4 shapes on ``img``, one per cell of a 3 x 2 layout. Returns the objects (kind,
    colour, centre in px, mask, polygon), the (colour, kind) pairs used, and a free layout cell."""
    h, w = img.shape[:2]
    k = int(rng.integers(2, 5))
    cells = [int(c) for c in rng.permutation(6)]
    cw, ch = w / 3, h / 2
    objs: list[dict] = []
    used: set = set()
    for j in range(k):
        kind = SHAPE_ORDER[(i + j * 3) % len(SHAPE_ORDER)] if j < 2 else str(rng.choice(SHAPE_ORDER))
        color = str(rng.choice(sorted(COLORS)))
        if j == 1 and i % 3 == 0:
            color = objs[0]["color"]  # a same-colour pair: multi-target expressions
        while (color, kind) in used:
            color = str(rng.choice(sorted(COLORS)))
        used.add((color, kind))
        cell = cells[j]
        s = min(cw, ch) * rng.uniform(0.6, 0.85)
        cx = (cell % 3 + 0.5) * cw + rng.uniform(-1, 1) * (min(cw, ch) - s) / 2 * 0.8
        cy = (cell // 3 + 0.5) * ch + rng.uniform(-1, 1) * (min(cw, ch) - s) / 2 * 0.8
        mask, poly = _shape_geometry(kind, cx, cy, s, rng, w, h)
        _paint(img, mask, COLORS[color], rng)
        objs.append({"kind": kind, "color": color, "cx": cx, "cy": cy, "mask": mask, "poly": poly})
    return objs, used, cells[k]


def _annotate(rng, i: int, image_id: int, img: np.ndarray, objs: list[dict], free_cell: int, anns: list) -> None:
    """COCO annotations of ``objs`` (polygon or RLE), and on every fourth image a crowd of dots
    painted into ``free_cell``, annotated with an uncompressed RLE (left out by loaders)."""
    from pycocotools import mask as mask_utils

    h, w = img.shape[:2]
    for obj in objs:
        ann_id = len(anns) + 1
        rle = _rle(obj["mask"])
        coco_rle = dict(rle, counts=rle["counts"].encode("ascii"))
        seg = [obj["poly"]] if obj["poly"] is not None else rle
        anns.append({"id": ann_id, "image_id": image_id, "category_id": SHAPES[obj["kind"]][0],
                     "segmentation": seg, "area": int(mask_utils.area(coco_rle)),
                     "bbox": [float(t) for t in mask_utils.toBbox(coco_rle)], "iscrowd": 0})
        obj["ann_id"] = ann_id
    if i % 4 != 1:
        return
    cw, ch = w / 3, h / 2
    dots = np.zeros((h, w), bool)
    x0, y0 = int((free_cell % 3) * cw) + 4, int((free_cell // 3) * ch) + 4
    for _ in range(6):
        x = x0 + int(rng.integers(0, max(1, int(cw) - 11)))
        y = y0 + int(rng.integers(0, max(1, int(ch) - 11)))
        dots[y:y + 3, x:x + 3] = True
    _paint(img, dots, (30, 30, 30), rng)
    coco_rle = mask_utils.frPyObjects({"size": [h, w], "counts": uncompressed_counts(dots)}, h, w)
    anns.append({"id": len(anns) + 1, "image_id": image_id, "category_id": DOTS_CATEGORY,
                 "segmentation": {"size": [h, w], "counts": uncompressed_counts(dots)},
                 "area": int(mask_utils.area(coco_rle)),
                 "bbox": [float(t) for t in mask_utils.toBbox(coco_rle)], "iscrowd": 1})


def _refcoco_refs(image: dict, objs: list[dict], sent_id: list, refs: list, points: list) -> None:
    """One RefCOCO ref per object (colour + shape, with a position), and its pointing row."""
    w, h = image["size"]
    for obj in objs:
        name = SHAPES[obj["kind"]][1]
        texts = [f"the {obj['color']} {name}", f"{obj['color']} {name} {_hpos(obj['cx'], w)}"]
        if sum(o["kind"] == obj["kind"] for o in objs) == 1:
            texts.append(f"the {name} {_vpos(obj['cy'], h)}")
        sents, ids = _sentences(texts, sent_id)
        stem = image["file"][:-len(".png")]
        refs.append({"sent_ids": ids, "file_name": f"{stem}_{obj['ann_id']}.png",
                     "ann_id": obj["ann_id"], "ref_id": len(refs) + 1, "image_id": image["id"],
                     "split": image["split"], "sentences": sents, "category_id": SHAPES[obj["kind"]][0]})
        px, py = _nearest_pixel(obj["mask"], obj["cx"], obj["cy"])
        points.append({"image": f"{IMAGE_DIR}/{image['file']}", "size": [w, h], "label": texts[0],
                       "points": [{"x": px, "y": py}], "count": 1, "collection_method": "pointing",
                       "split": image["split"]})


def _grefcoco_refs(rng, i: int, image: dict, objs: list[dict], used: set, sent_id: list, grefs: list,
                   points: list) -> None:
    """gRefCOCO refs: every colour / shape shared by 2+ objects (and its counting row), then one
    absent object (no target; a pointing row with no point on every fifth image)."""
    w, h = image["size"]
    where = {"image_id": image["id"], "split": image["split"]}
    groups = []
    for color in sorted({o["color"] for o in objs}):
        members = [o for o in objs if o["color"] == color]
        if len(members) > 1:
            groups.append((members, [f"all the {color} shapes", f"every {color} object"], f"{color} shapes"))
    for kind in sorted({o["kind"] for o in objs}):
        members = [o for o in objs if o["kind"] == kind]
        if len(members) > 1:
            plural = SHAPES[kind][2]
            groups.append((members, [f"all the {plural}", f"both {plural}" if len(members) == 2
                                     else f"the {len(members)} {plural}"], plural))
    for members, texts, label in groups:
        sents, ids = _sentences(texts, sent_id)
        grefs.append({"sent_ids": ids, "ann_id": [o["ann_id"] for o in members], "ref_id": len(grefs) + 1,
                      "image_id": where["image_id"], "split": where["split"], "sentences": sents,
                      "no_target": False, "category_id": [SHAPES[o["kind"]][0] for o in members]})
        pts = [dict(zip("xy", _nearest_pixel(o["mask"], o["cx"], o["cy"]))) for o in members]
        points.append({"image": f"{IMAGE_DIR}/{image['file']}", "size": [w, h], "label": label, "points": pts,
                       "count": len(pts), "collection_method": "counting", "split": where["split"]})
    absent = [(c, kd) for c in sorted(COLORS) for kd in SHAPE_ORDER if (c, kd) not in used]
    color, kind = absent[int(rng.integers(0, len(absent)))]
    name = SHAPES[kind][1]
    sents, ids = _sentences([f"the {color} {name}", f"{color} {name} {_hpos(w / 2, w)}"], sent_id)
    grefs.append({"sent_ids": ids, "ann_id": [-1], "ref_id": len(grefs) + 1, "image_id": where["image_id"],
                  "split": where["split"], "sentences": sents, "no_target": True, "category_id": [-1]})
    if i % 5 == 0:
        points.append({"image": f"{IMAGE_DIR}/{image['file']}", "size": [w, h], "label": f"the {color} {name}",
                       "points": [], "count": 0, "collection_method": "pointing", "split": where["split"]})


def _lane_images(rng, out_dir: str) -> list[dict]:
    from PIL import Image, ImageDraw

    records = []
    for i in range(N_LANE_IMAGES):
        w, h = SIZES[int(rng.integers(2, len(SIZES)))]
        split = "val" if i >= N_LANE_IMAGES - 2 else "train"
        horizon = int(h * rng.uniform(0.3, 0.42))
        arr = _background(rng, w, h)
        arr[:horizon] = np.clip(np.array([150, 185, 225])[None, None, :]
                                + rng.normal(0, 3, size=(horizon, w, 3)), 0, 255)
        road = np.clip(np.array([85, 85, 90])[None, None, :] + rng.normal(0, 6, size=(h - horizon, w, 3)), 0, 255)
        arr[horizon:] = road
        img = Image.fromarray(arr.astype(np.uint8), "RGB")
        draw = ImageDraw.Draw(img)
        vp_x = w * rng.uniform(0.4, 0.6)
        n_lanes = 0 if i == N_LANE_IMAGES - 1 else int(rng.integers(2, 5))  # the last road has none
        bottoms = np.sort(rng.uniform(0.05, 0.95, size=n_lanes)) * w
        bend = rng.uniform(-0.08, 0.08) * w
        lanes = []
        for xb in bottoms:
            top_y = horizon + 6
            verts = []
            for t in np.linspace(0.0, 1.0, 6):
                y = (h - 1) + t * (top_y - (h - 1))
                x = xb + t * (vp_x - xb) * 0.85 + bend * t * (1 - t) * 4
                verts.append([round(float(x), 1), round(float(y), 1)])
            color = (240, 240, 240) if rng.uniform() < 0.7 else (235, 200, 40)
            draw.line([tuple(v) for v in verts], fill=color, width=3)
            lanes.append(verts)
        fname = f"{LANE_DIR}/getok_lane_{i:03d}.png"
        path = os.path.join(out_dir, fname)
        os.makedirs(os.path.dirname(path), exist_ok=True)
        img.save(path, format="PNG", compress_level=6)
        records.append({"id": f"lane{i:03d}", "image": fname, "size": [w, h], "lanes": lanes,
                        "expression": "the lane markings", "split": split})
    return records


def _dump_json(obj, path: str, indent: int | None = None) -> None:
    os.makedirs(os.path.dirname(path), exist_ok=True)
    with open(path, "w", encoding="utf-8", newline="\n") as f:
        f.write(json.dumps(obj, indent=indent, ensure_ascii=False) + "\n")


_README = """GETok sample dataset (generated by getok_core.data.sample_data.write_sample_dataset, seed {seed})

Synthetic images of coloured shapes on textured backgrounds and of roads with lane markings,
annotated in the formats the GETok loaders read. Nothing here is real data; it exists to try the
pipeline end to end and to test it. Read it with
    getok_core.data.loaders.load_dataset("sample", "<this folder>")        (all parts)
    load_dataset("refcoco", root) / ("grefcoco", root) / ("points", root) / ("lanes", root)
    load_dataset("coco", root, annotation_file="refcoco/instances.json", image_dir="images/train2014")

Files
  images/train2014/getok_sample_NNN.png  {n_shape} RGB images, 160x120 to 320x240
  images/lanes/getok_lane_NNN.png        {n_lane} road images (the last has no lane markings)
  refcoco/instances.json                 COCO instances: {n_ann} annotations ({n_crowd} crowd),
                                         categories: {cats}
                                         polygons for convex / L / C shapes, compressed RLE for
                                         rings, square frames (holes) and thin lines (2 px wide),
                                         uncompressed RLE for the crowd "dots" (iscrowd = 1)
  refcoco/refs(unc).p                    RefCOCO refs (pickle, protocol 2): {n_refs} refs, one per
                                         object, 2-3 sentences each ("the red circle",
                                         "red circle on the left", "the circle at the top")
  grefcoco/instances.json                the same instances
  grefcoco/grefs(unc).json               gRefCOCO refs: {n_multi} multi-target ("all the red
                                         shapes", ann_id lists) and {n_none} no-target (ann_id [-1])
  points.json                            {n_points} Pixmo-points-style records, pixels
                                         ({n_points_none} with no point: the object is absent)
  lanes.json                             {n_lane} GETok lanes records, pixel polylines

Splits: the last {n_val} shape images and the last 2 road images are "val", the rest "train".
Every mask was rasterized first and painted into its image, so annotations match pixels exactly.
"""


def write_sample_dataset(out_dir, seed: int = 0) -> dict:
    """Write the sample dataset into ``out_dir`` (created if needed); returns a summary dict
    (counts and the relative paths written). Same seed, same bytes."""
    out_dir = os.fspath(out_dir)
    rng = np.random.default_rng(seed)
    images, anns, refs, grefs, points = _shape_images(rng, out_dir)
    lanes = _lane_images(rng, out_dir)
    categories = [{"id": cid, "name": name, "supercategory": sup} for cid, name, _, _, sup in SHAPES.values()]
    categories.append({"id": DOTS_CATEGORY, "name": "dots", "supercategory": "crowd"})
    instances = {"info": {"description": "GETok sample dataset", "version": "1", "seed": seed},
                 "licenses": [], "images": images, "annotations": anns, "categories": categories}
    for sub in ("refcoco", "grefcoco"):
        _dump_json(instances, os.path.join(out_dir, sub, "instances.json"))
    # A JSON round trip gives plain objects with a stable identity structure: byte-stable pickles.
    plain_refs = json.loads(json.dumps(refs))
    with open(os.path.join(out_dir, "refcoco", "refs(unc).p"), "wb") as f:
        f.write(pickle.dumps(plain_refs, protocol=2))
    _dump_json(grefs, os.path.join(out_dir, "grefcoco", "grefs(unc).json"))
    for i, rec in enumerate(points):
        rec["id"] = f"pt{i:04d}"
    _dump_json(points, os.path.join(out_dir, "points.json"), indent=1)
    _dump_json(lanes, os.path.join(out_dir, "lanes.json"), indent=1)
    summary = {
        "seed": seed, "n_shape": len(images), "n_lane": len(lanes), "n_ann": len(anns),
        "n_crowd": sum(a["iscrowd"] for a in anns), "n_refs": len(refs),
        "n_multi": sum(1 for g in grefs if not g["no_target"]), "n_none": sum(1 for g in grefs if g["no_target"]),
        "n_points": len(points), "n_points_none": sum(1 for p in points if not p["points"]), "n_val": N_VAL,
        "cats": ", ".join(c["name"] for c in categories),
    }
    with open(os.path.join(out_dir, "README.txt"), "w", encoding="utf-8", newline="\n") as f:
        f.write(_README.format(**summary))
    files = sorted(os.path.relpath(os.path.join(d, n), out_dir).replace(os.sep, "/")
                   for d, _, names in os.walk(out_dir) for n in names)
    summary["files"] = files
    return summary


__all__ = ["write_sample_dataset", "SHAPES", "COLORS", "N_SHAPE_IMAGES", "N_LANE_IMAGES"]
