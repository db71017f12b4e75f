"""The per-image work of ``getok prepare``: the samples of one image -> records (SPEC §4, §5).

``ImageWorker(cfg)(samples)``: decodes the image once and completely, whatever the task
(``data.images.load_image``, EXIF applied: a truncated or unreadable file skips every sample of
it), gets its mask proposals when a seg sample needs them (from the proposal cache in
``OUT/proposals``, else the configured proposer, on the image downscaled to ``cfg.max_pixels``
pixels when larger: ``proposals`` module docstring), and per sample the greedy ``<seg>`` points,
the answer text, the refinement conversation and a check of the ground truth. A record is
``{"status": "ok", "sample": ..., "answer", "instances", "achieved_iou", "points_per_mask",
"refine"}`` or a skip record (``skip_record``: the stage, the kind (``data.rows.SKIP_KINDS``), the
field and the reason). Samples travel in records as JSON (``sample_to_dict`` /
``sample_from_dict``).

``init_process_worker`` / ``process_work``: one ``ImageWorker`` per process of a
``multiprocessing`` pool (the local engine with ``workers > 1``); the Ray engine holds one per
actor (``ray_engine.RayImageWorker``).
"""

from __future__ import annotations

from dataclasses import asdict
from pathlib import Path

from ..codec.answer import format_answer
from ..codec.instance import Instance, instance_to_dict
from ..codec.vocab import GetokVocab
from ..data import groundtruth
from ..data.greedy import PackedProposals, greedy_select, index_to_cell
from ..data.images import load_image
from ..data.masks import decode_rle, mask_box
from ..data.offsets import sample_refinement, stable_seed
from ..data.records import Sample
from .config import PrepareConfig
from .proposals import ProposalCache, RegionProposer, Sam2Proposer, SamProposer


# ---------------------------------------------------------------------- samples <-> JSON
def sample_to_dict(s: Sample) -> dict:
    """A JSON-able dict of ``s`` (``sample_from_dict`` inverts it)."""
    d = asdict(s)
    d["targets"] = [groundtruth.target_to_dict(t) for t in s.targets]
    d["image_size"] = list(s.image_size)
    return d


def sample_from_dict(d: dict) -> Sample:
    d = dict(d)
    d["targets"] = [groundtruth.target_from_dict(t) for t in d["targets"]]
    d["image_size"] = tuple(d["image_size"])
    return Sample(**d)


def skip_record(sample: Sample, field_: str, reason: str, kind: str, stage: str = "sample") -> dict:
    """The record of a sample left out: its id, image, the stage (``image``: decoding the image
    and its proposals; ``sample``: its targets), the kind (``data.rows.SKIP_KINDS``), the field
    at fault (as the dataset row names it) and why. The engine adds the row's file and line."""
    return {"sample_id": sample.sample_id, "status": "skipped", "stage": stage, "kind": kind,
            "image": sample.image_path, "field": field_, "reason": reason}


# ---------------------------------------------------------------------- one image
class ImageWorker:
    """Turns the samples of one image into records. Holds the proposer and the cache."""

    def __init__(self, cfg: PrepareConfig):
        self.cfg = cfg
        self.vocab = GetokVocab(cfg.grid_size)
        self.cache = ProposalCache(Path(cfg.out) / "proposals")
        self._proposer = None

    @property
    def proposer(self):
        if self._proposer is None:
            c = self.cfg
            bound = {"max_pixels": c.max_pixels}
            if c.proposals == "region":
                self._proposer = RegionProposer(c.region_method, **bound)
            elif c.proposals == "sam":
                self._proposer = SamProposer.from_checkpoint(c.sam_model, c.sam_checkpoint, device=c.device,
                                                             **bound)
            elif c.proposals == "sam2":
                self._proposer = Sam2Proposer.from_checkpoint(c.sam_model, c.sam_checkpoint, device=c.device,
                                                              **bound)
            else:
                raise ValueError(f"unknown proposals {c.proposals!r}: region, sam or sam2")
        return self._proposer

    def __call__(self, samples: list[Sample]) -> list[dict]:
        first = samples[0]
        try:  # decoded completely for every task: a truncated file is a skip, not a kept row
            image = load_image(first.image_path)
        except Exception as exc:  # unreadable image: every sample of it is skipped, with the reason
            return [skip_record(s, "image", f"image unreadable: {type(exc).__name__}: {exc}",
                                "image-unreadable", "image") for s in samples]
        h, w = image.shape[:2]
        records = [skip_record(s, "image", f"annotated size {list(s.image_size)} != image size {[w, h]}",
                               "image-size-mismatch", "image")
                   for s in samples if tuple(s.image_size) != (w, h)]
        good = [s for s in samples if tuple(s.image_size) == (w, h)]
        packed = None
        if any(s.task == "seg" and s.targets for s in good):
            n = self.cfg.grid_size
            props = self.cache.get_or_compute(first.image_key, self.proposer.tag, n,
                                              lambda: self.proposer(image, n))
            del image
            packed = PackedProposals.from_rles(props.rles)
        return records + [self.sample_record(s, packed) for s in good]

    def sample_record(self, s: Sample, packed) -> dict:
        cfg, vocab = self.cfg, self.vocab
        instances: list[Instance] = []
        ious: list[float] = []
        points_per_mask: list[int] = []
        refine = None
        for j, t in enumerate(s.targets):
            field_ = f"targets[{j}]"
            if s.task == "seg":
                if t.mask is None:
                    return skip_record(s, field_ + ".mask", "seg target without a mask", "invalid-target")
                mask = decode_rle(t.mask)
                idx, iou = greedy_select(mask, packed, cfg.tau, cfg.max_points)
                if not idx:
                    return skip_record(s, field_ + ".mask", "no proposal overlaps the mask", "no-proposal")
                box = t.box if t.box is not None else mask_box(mask)
                pts = [vocab.cell_point(index_to_cell(k, vocab.grid_size)) for k in idx]
                instances.append(Instance(box=box, points=pts))
                ious.append(iou)
                points_per_mask.append(len(idx))
                if len(s.targets) == 1:
                    ref = sample_refinement(mask, vocab, k=cfg.refine_k, box=box,
                                            rng=stable_seed(cfg.seed, s.sample_id))
                    if ref is not None:
                        refine = {"turn1": ref.turn1_text, "turn2": ref.turn2_text,
                                  "categories": list(ref.categories)}
            elif s.task == "box":
                if t.box is None:
                    return skip_record(s, field_ + ".box", "box target without a box", "invalid-target")
                instances.append(Instance(box=t.box))
            elif s.task == "point":
                if not t.points:
                    return skip_record(s, field_ + ".points", "point target without points", "invalid-target")
                instances += [Instance(point=p) for p in t.points]
            elif s.task == "line":
                if t.polyline is None:
                    return skip_record(s, field_ + ".polyline", "line target without a polyline",
                                       "invalid-target")
                instances.append(Instance(polyline=t.polyline))
        try:
            answer = format_answer(instances, vocab)
            groundtruth.make_ground_truth(s)
        except ValueError as exc:  # a degenerate polyline, an invalid ground truth...
            return skip_record(s, "targets", str(exc), "invalid-target")
        return {"sample_id": s.sample_id, "status": "ok", "sample": sample_to_dict(s), "answer": answer,
                "instances": [instance_to_dict(i, ndigits=9) for i in instances],
                "achieved_iou": ious, "points_per_mask": points_per_mask, "refine": refine}



# ---------------------------------------------------------------------- one worker per process
_WORKER: ImageWorker | None = None


def init_process_worker(cfg: PrepareConfig) -> None:
    """The ``initializer`` of a ``multiprocessing`` pool: this process's ``ImageWorker``."""
    global _WORKER
    _WORKER = ImageWorker(cfg)


def process_work(samples: list[Sample]) -> list[dict]:
    """The records of one image's samples, by this process's worker (``init_process_worker``)."""
    return _WORKER(samples)


__all__ = ["ImageWorker", "sample_to_dict", "sample_from_dict", "skip_record", "init_process_worker",
           "process_work"]
