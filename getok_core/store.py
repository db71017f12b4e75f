"""Resumable, atomic storage for data preparation.

``RecordStore`` appends one JSON object per line to a shard's records file and survives being
killed at any point: on reopening, a partial last line is cut off and the ids already written
are skipped. Final files are written with ``atomic_write`` (a temporary file in the same folder,
then ``os.replace``), so a reader never sees half a file.
"""

from __future__ import annotations

import contextlib
import json
import os
import tempfile
from pathlib import Path


@contextlib.contextmanager
def atomic_write(path, mode: str = "w", encoding: str | None = "utf-8"):
    """Open a temporary file beside ``path``; on success it replaces ``path``, on error it is
    removed and ``path`` is left as it was."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, mode, encoding=None if "b" in mode else encoding) as f:
            yield f
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
        raise


def dumps_line(obj) -> str:
    """One canonical JSON line (sorted keys, no spaces): identical objects give identical bytes."""
    return json.dumps(obj, sort_keys=True, separators=(",", ":"), ensure_ascii=False) + "\n"


class RecordStore:
    """Append-only JSONL of records keyed by ``key`` (default ``"sample_id"``)."""

    def __init__(self, path, key: str = "sample_id"):
        self.path = Path(path)
        self.key = key
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self.done: set[str] = set()
        self.truncated_bytes = 0
        if self.path.exists():
            self._recover()
        self._f = open(self.path, "a", encoding="utf-8")

    def _recover(self):
        data = self.path.read_bytes()
        end = data.rfind(b"\n") + 1
        if end < len(data):  # a line cut by a kill: drop it, it will be redone
            self.truncated_bytes = len(data) - end
            with open(self.path, "r+b") as f:
                f.truncate(end)
        for line in data[:end].splitlines():
            if line.strip():
                self.done.add(str(json.loads(line)[self.key]))

    def write(self, records) -> None:
        """Append ``records`` and make them durable (one flush + fsync per call)."""
        for rec in records:
            self._f.write(dumps_line(rec))
            self.done.add(str(rec[self.key]))
        self._f.flush()
        os.fsync(self._f.fileno())

    def close(self) -> None:
        self._f.close()

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()


def read_records(paths) -> list[dict]:
    """Every record of the given JSONL files, sorted by sample_id (order-independent output)."""
    out = []
    for p in paths:
        with open(p, encoding="utf-8") as f:
            out += [json.loads(line) for line in f if line.strip()]
    out.sort(key=lambda r: str(r.get("sample_id", "")))
    return out
