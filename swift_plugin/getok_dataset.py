"""ms-swift datasets: the bundled GETok sample by name, and a preprocessor for ``getok prepare`` output.

- ``--dataset getok-sample`` (also ``getok-sample-refine``, ``getok-sample-val``,
  ``getok-sample-val-refine``): on first use the sample dataset is drawn
  (``getok_core.data.sample_data``) and prepared (``getok_core.prepare.engine``: region proposals, greedy
  ``<seg>`` points, refinement conversations, swift format) into
  ``$GETOK_CACHE/swift-sample-grid{N}`` (default ``~/.cache/getok``; N = ``GETOK_GRID_SIZE``), then
  read like any JSONL. Takes ~20 s once; concurrent ranks wait on a file lock.
- ``--dataset PATH`` with a ``getok prepare`` file (``OUT/swift/train.jsonl``...) works as it is:
  its rows are standard ms-swift rows (messages + absolute image paths). To also validate them,
  list the files in ``GETOK_DATASET_PATHS`` (``os.pathsep``-separated): the plugin registers them
  with ``GetokPreprocessor``, which resolves relative image paths against the file's folder and
  drops (with a warning) rows whose assistant answer is not a valid GETok answer (``parse_answer`` /
  ``parse_offsets``).
"""

from __future__ import annotations

import contextlib
import os
from pathlib import Path

from swift.dataset import DatasetMeta, MessagesPreprocessor, register_dataset
from swift.dataset.loader import DatasetLoader
from swift.utils import get_logger

from getok_core.codec.answer import parse_answer, parse_offsets
from getok_core.codec.vocab import STRUCTURAL_TAGS

from .getok_tokens import vocab_from_env

logger = get_logger()

ENV_CACHE = "GETOK_CACHE"
ENV_DATASET_PATHS = "GETOK_DATASET_PATHS"
#: registered name -> file of the prepared sample
SAMPLE_DATASETS = {
    "getok-sample": "swift/train.jsonl",
    "getok-sample-refine": "swift/train_refine.jsonl",
    "getok-sample-val": "swift/val.jsonl",
    "getok-sample-val-refine": "swift/val_refine.jsonl",
}


def cache_root() -> Path:
    return Path(os.environ.get(ENV_CACHE) or Path.home() / ".cache" / "getok").expanduser()


def sample_dir(grid_size: int | None = None) -> Path:
    n = vocab_from_env().grid_size if grid_size is None else grid_size
    return cache_root() / f"swift-sample-grid{n}"


@contextlib.contextmanager
def _file_lock(path: Path):
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "w") as f:
        try:
            import fcntl

            fcntl.flock(f, fcntl.LOCK_EX)
        except ImportError:  # pragma: no cover - not POSIX
            pass
        yield


def ensure_sample(out: str | os.PathLike | None = None, grid_size: int | None = None) -> Path:
    """The prepared sample dataset folder (``OUT/swift/*.jsonl``), generated and prepared when
    missing. Safe to call from several processes at once."""
    from getok_core.prepare import PrepareConfig, prepare
    from getok_core.data.sample_data import write_sample_dataset

    n = vocab_from_env().grid_size if grid_size is None else grid_size
    out = Path(out) if out is not None else sample_dir(n)
    done = out / "swift" / "train.jsonl"
    if done.exists() and (out / "summary.json").exists():
        return out
    with _file_lock(out.parent / f".{out.name}.lock"):
        if done.exists() and (out / "summary.json").exists():
            return out
        root = out / "sample_data"
        if not (root / "README.txt").exists():
            logger.info(f"GETok: drawing the sample dataset into {root}")
            write_sample_dataset(root, seed=0)
        logger.info(f"GETok: preparing the sample dataset into {out} (region proposals, grid {n})")
        cfg = PrepareConfig(dataset="sample", root=str(root.resolve()), out=str(out), grid_size=n,
                            formats=("swift",), progress=False)
        prepare(cfg, log=logger.info)
    return out


class GetokSampleLoader(DatasetLoader):
    """Prepares the sample on first use, then loads its JSONL like ``--dataset PATH``."""

    def load(self, dataset_syntax=None, dataset_meta=None, *, use_hf=None):
        rel = getattr(dataset_meta, "getok_file", None) or SAMPLE_DATASETS["getok-sample"]
        path = ensure_sample() / rel
        dataset_syntax.dataset = str(path)
        dataset_syntax.dataset_type = "path"
        return super().load(dataset_syntax, dataset_meta, use_hf=use_hf)


def _has_getok(text: str) -> bool:
    return "<answer>" in text or "<grid" in text or "<OFF" in text or any(t in text for t in STRUCTURAL_TAGS)


class GetokPreprocessor(MessagesPreprocessor):
    """Standard messages rows, plus: relative image paths resolved against ``base_dir``; rows whose
    assistant answers are not valid GETok answers dropped (``validate``)."""

    def __init__(self, *, base_dir: str | None = None, validate: bool = True, **kwargs):
        super().__init__(**kwargs)
        self.base_dir = base_dir
        self.validate = validate
        self.vocab = vocab_from_env()
        self.dropped = 0

    def _resolve(self, image):
        if isinstance(image, str) and self.base_dir and not os.path.isabs(image) and "://" not in image:
            candidate = os.path.join(self.base_dir, image)
            if os.path.exists(candidate):
                return candidate
        return image

    def check_answers(self, messages) -> str | None:
        """None when every assistant turn with GETok content parses; else the first problem."""
        proposal = None
        for m in messages:
            if m.get("role") != "assistant" or not isinstance(m.get("content"), str):
                continue
            text = m["content"]
            if not _has_getok(text):
                continue
            if "<offset>" in text and proposal is not None:
                parsed = parse_offsets(text, proposal.instances, self.vocab)
            else:
                parsed = parse_answer(text, self.vocab)
                proposal = parsed
            if not parsed.valid:
                return "; ".join(parsed.errors[:3])
        return None

    def preprocess(self, row):
        row = super().preprocess(row)
        if row is None:
            return None
        if row.get("images"):
            row["images"] = [self._resolve(im) for im in row["images"]]
        if self.validate and not row.get("objects"):
            problem = self.check_answers(row["messages"])
            if problem is not None:
                self.dropped += 1
                if self.dropped <= 5:
                    logger.warning(f"GETok: dropped a row with an invalid GETok answer: {problem}")
                return None
        return row


def register() -> list[str]:
    """Register the sample datasets and the files listed in ``GETOK_DATASET_PATHS`` (idempotent)."""
    names = []
    for name, rel in SAMPLE_DATASETS.items():
        # no dataset_path: ms-swift matches unknown paths to registered ones by file name, and the
        # sample's files are called train.jsonl like everyone's; the loader supplies the path
        meta = DatasetMeta(dataset_name=name, loader=GetokSampleLoader, preprocess_func=GetokPreprocessor(),
                           tags=["grounding", "getok"],
                           help="GETok sample dataset, prepared on first use (swift_plugin.getok_dataset)")
        meta.getok_file = rel
        register_dataset(meta, exist_ok=True)
        names.append(name)
    for p in filter(None, (os.environ.get(ENV_DATASET_PATHS) or "").split(os.pathsep)):
        path = os.path.abspath(os.path.expanduser(p))
        register_dataset(DatasetMeta(dataset_path=path, preprocess_func=GetokPreprocessor(
            base_dir=os.path.dirname(path)), tags=["getok"]), exist_ok=True)
        names.append(path)
    return names


__all__ = ["GetokPreprocessor", "GetokSampleLoader", "ensure_sample", "sample_dir", "register", "SAMPLE_DATASETS",
           "ENV_CACHE", "ENV_DATASET_PATHS"]
