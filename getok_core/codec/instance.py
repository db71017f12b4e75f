"""One grounded object (``Instance``) and its codec to grid cells (SPEC §3).

Every coordinate is normalized (u, v) in [0, 1]. An instance may carry a single ``point`` (a
pointing answer), a ``box`` (u1, v1, u2, v2), seg ``points`` (prompts for a mask decoder), a
``polyline`` and / or a ``polygon``.
"""

from __future__ import annotations

from dataclasses import dataclass

from .coords import box_norm_to_pixel, box_pixel_to_norm, norm_to_pixel, pixel_to_norm
from .vocab import Box, Cell, GetokVocab, Offset, Point


@dataclass(frozen=True)
class Instance:
    """One object of an answer, in normalized image coordinates."""

    box: Box | None = None
    points: tuple[Point, ...] = ()
    polyline: tuple[Point, ...] | None = None
    polygon: tuple[Point, ...] | None = None
    point: Point | None = None

    def __post_init__(self):
        # Accept lists from callers; store tuples so instances are hashable and compare by value.
        def tup(p):
            return tuple(float(t) for t in p)

        object.__setattr__(self, "box", None if self.box is None else tup(self.box))
        object.__setattr__(self, "points", tuple(tup(p) for p in self.points))
        for name in ("polyline", "polygon"):
            value = getattr(self, name)
            object.__setattr__(self, name, None if value is None else tuple(tup(p) for p in value))
        object.__setattr__(self, "point", None if self.point is None else tup(self.point))

    def is_empty(self) -> bool:
        return (self.box is None and not self.points and self.polyline is None
                and self.polygon is None and self.point is None)


@dataclass(frozen=True)
class InstanceCells:
    """An instance as grid cells: what its tokens say, element by element."""

    box: tuple[Cell, Cell] | None = None
    points: tuple[Cell, ...] = ()
    polyline: tuple[Cell, ...] | None = None
    polygon: tuple[Cell, ...] | None = None
    point: Cell | None = None


def _dedupe_consecutive(cells: list[Cell]) -> list[Cell]:
    out: list[Cell] = []
    for c in cells:
        if not out or out[-1] != c:
            out.append(c)
    return out


def _simplify(points, tolerance: float, closed: bool):
    try:
        from skimage.measure import approximate_polygon
    except ImportError as exc:  # pragma: no cover - depends on the environment
        raise ImportError("simplify=True needs scikit-image (pip install scikit-image)") from exc
    import numpy as np

    pts = np.asarray(points, dtype=float)
    if closed:
        pts = np.vstack([pts, pts[:1]])
    out = approximate_polygon(pts, tolerance)
    return [tuple(p) for p in (out[:-1] if closed else out)]


def encode_instance(instance: Instance, vocab: GetokVocab, simplify: bool = False) -> InstanceCells:
    """Cells of every element of ``instance``.

    Polylines and polygons keep their vertex order with consecutive duplicate cells dropped (a
    polygon's closing vertex too); ``simplify`` first applies Douglas-Peucker at half a cell.
    Raises ValueError for an empty instance, a polyline that collapses to fewer than 2 cells or a
    polygon to fewer than 3 distinct cells.
    """
    if instance.is_empty():
        raise ValueError("empty instance: no point, box, seg points, polyline or polygon")
    seg: list[Cell] = []
    for p in instance.points:
        c = vocab.point_cell(p)
        if c not in seg:
            seg.append(c)
    polyline = polygon = None
    if instance.polyline is not None:
        verts = instance.polyline
        if simplify and len(verts) > 2:
            verts = _simplify(verts, 0.5 / vocab.grid_size, closed=False)
        polyline = _dedupe_consecutive([vocab.point_cell(p) for p in verts])
        if len(polyline) < 2:
            raise ValueError(f"polyline collapses to {len(polyline)} cell(s) on a {vocab.grid_size} grid")
    if instance.polygon is not None:
        verts = instance.polygon
        if simplify and len(verts) > 3:
            verts = _simplify(verts, 0.5 / vocab.grid_size, closed=True)
        polygon = _dedupe_consecutive([vocab.point_cell(p) for p in verts])
        while len(polygon) > 1 and polygon[-1] == polygon[0]:
            polygon.pop()
        if len(set(polygon)) < 3:
            raise ValueError(f"polygon collapses to {len(set(polygon))} distinct cell(s) on a "
                             f"{vocab.grid_size} grid")
    return InstanceCells(
        box=None if instance.box is None else vocab.box_cells(instance.box),
        points=tuple(seg),
        polyline=None if polyline is None else tuple(polyline),
        polygon=None if polygon is None else tuple(polygon),
        point=None if instance.point is None else vocab.point_cell(instance.point),
    )


def decode_instance(cells: InstanceCells, vocab: GetokVocab) -> Instance:
    """Instance whose geometry the cells mean: cell centres, and SPEC §3's box rule."""
    return Instance(
        box=None if cells.box is None else vocab.cells_box(cells.box),
        points=tuple(vocab.cell_point(c) for c in cells.points),
        polyline=None if cells.polyline is None else tuple(vocab.cell_point(c) for c in cells.polyline),
        polygon=None if cells.polygon is None else tuple(vocab.cell_point(c) for c in cells.polygon),
        point=None if cells.point is None else vocab.cell_point(cells.point),
    )


def quantize(instance: Instance, vocab: GetokVocab) -> Instance:
    """``instance`` as its tokens decode: what survives a format / parse round trip."""
    return decode_instance(encode_instance(instance, vocab), vocab)


# ---------------------------------------------------------------------- refinement anchors
#: Order of an instance's anchors in the refinement turn (SPEC §3): box corners first (top-left,
#: bottom-right), then seg points, then the single point, polyline and polygon vertices.
ANCHOR_KINDS = ("box", "points", "point", "polyline", "polygon")


def anchors(instance: Instance) -> list[tuple[str, Point]]:
    """(kind, uv) of every anchor of ``instance``, in refinement-turn order."""
    out: list[tuple[str, Point]] = []
    if instance.box is not None:
        u1, v1, u2, v2 = instance.box
        out += [("box", (u1, v1)), ("box", (u2, v2))]
    out += [("points", p) for p in instance.points]
    if instance.point is not None:
        out.append(("point", instance.point))
    out += [("polyline", p) for p in instance.polyline or ()]
    out += [("polygon", p) for p in instance.polygon or ()]
    return out


def apply_offsets(instance: Instance, offsets: list[Offset | None], vocab: GetokVocab,
                  round: int = 1) -> Instance:
    """Refined ``instance``: anchor i moved by ``offsets[i]`` (None = ``<DELETE>``).

    ``offsets`` has one entry per anchor (see ``anchors``). A deleted box corner keeps its place
    (the parser reports it as an error); a polyline left with fewer than 2 vertices or a polygon
    with fewer than 3 is dropped. The result may be empty.
    """
    anc = anchors(instance)
    if len(offsets) != len(anc):
        raise ValueError(f"{len(offsets)} offsets for {len(anc)} anchors")
    moved: dict[str, list[Point]] = {k: [] for k in ANCHOR_KINDS}
    for (kind, uv), off in zip(anc, offsets):
        if off is None:
            if kind == "box":
                moved[kind].append(uv)
            continue
        moved[kind].append(vocab.apply_offset(uv, off, round))
    box = None
    if instance.box is not None:
        (u1, v1), (u2, v2) = moved["box"]
        box = (min(u1, u2), min(v1, v2), max(u1, u2), max(v1, v2))
    line = moved["polyline"] if instance.polyline is not None and len(moved["polyline"]) >= 2 else None
    poly = moved["polygon"] if instance.polygon is not None and len(moved["polygon"]) >= 3 else None
    return Instance(box=box, points=tuple(moved["points"]), polyline=line, polygon=poly,
                    point=moved["point"][0] if moved["point"] else None)


# ---------------------------------------------------------------------- JSON objects
def instance_from_dict(d: dict, size=None) -> Instance:
    """Instance from a JSON object with keys box / points / polyline / polygon / point, in pixels
    of an image of ``size`` = (W, H) when given, else normalized."""
    unknown = set(d) - {"box", "points", "polyline", "polygon", "point"}
    if unknown:
        raise ValueError(f"unknown instance field(s) {sorted(unknown)}")
    pt = (lambda p: pixel_to_norm(p, size)) if size else (lambda p: tuple(p))
    box = d.get("box")
    return Instance(
        box=None if box is None else (box_pixel_to_norm(box, size) if size else tuple(box)),
        points=[pt(p) for p in d.get("points") or []],
        polyline=None if d.get("polyline") is None else [pt(p) for p in d["polyline"]],
        polygon=None if d.get("polygon") is None else [pt(p) for p in d["polygon"]],
        point=None if d.get("point") is None else pt(d["point"]),
    )


def instance_to_dict(inst: Instance, size=None, ndigits: int = 4) -> dict:
    """JSON object of an instance, in pixels when ``size`` = (W, H) is given, else normalized."""
    def pt(p):
        p = norm_to_pixel(p, size) if size else p
        return [round(t, ndigits) for t in p]

    out: dict = {}
    if inst.point is not None:
        out["point"] = pt(inst.point)
    if inst.box is not None:
        b = box_norm_to_pixel(inst.box, size) if size else inst.box
        out["box"] = [round(t, ndigits) for t in b]
    if inst.points:
        out["points"] = [pt(p) for p in inst.points]
    if inst.polyline is not None:
        out["polyline"] = [pt(p) for p in inst.polyline]
    if inst.polygon is not None:
        out["polygon"] = [pt(p) for p in inst.polygon]
    return out


__all__ = ["Instance", "InstanceCells", "encode_instance", "decode_instance", "quantize",
           "anchors", "apply_offsets", "ANCHOR_KINDS",
           "instance_from_dict", "instance_to_dict"]
