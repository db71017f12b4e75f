"""Resumable, atomic storage for data preparation.

``RecordStore`` appends one JSON object per line to a shard's records file and survives being
killed at any point: on reopening, a partial last line is cut off and the ids already written
are skipped. Final files are written through ``atomic_path`` (a temporary file in the same folder,
then ``os.replace``), so a reader never sees half a file.
"""

from __future__ import annotations

import contextlib
import json
import os
import tempfile
from pathlib import Path


@contextlib.contextmanager
def atomic_path(path):
    """Yield a temporary path in ``path``'s folder; on success it replaces ``path``
    (``os.replace``, after the caller closed it), on any exception it is removed and ``path`` is
    left as it was. The new file gets the permissions the umask gives (or the old file's)."""
    path = os.fspath(path)
    folder = os.path.dirname(os.path.abspath(path))
    os.makedirs(folder, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{os.path.basename(path)}.", suffix=".tmp", dir=folder)
    os.close(fd)
    try:
        yield tmp
        mode = os.stat(path).st_mode & 0o777 if os.path.exists(path) else _new_file_mode()
        os.chmod(tmp, mode)
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
        raise


def _new_file_mode() -> int:
    """Permissions a new file gets from the process umask (read without changing it)."""
    try:
        with open("/proc/self/status") as f:
            for line in f:
                if line.startswith("Umask:"):
                    return 0o666 & ~int(line.split()[1], 8)
    except OSError:
        pass
    return 0o644


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
