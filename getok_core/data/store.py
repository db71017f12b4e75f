"""Resumable, atomic storage for data preparation.

``RecordStore`` appends one JSON object per line to a shard's records file and survives being
killed at any point: on reopening, a partial last line is cut off and the ids already written
are skipped. Final files are written through ``atomic_path`` (a temporary file in the same folder,
then ``os.replace``), so a reader never sees half a file; ``read_records`` keeps one record per
id (the first), so records appended twice never give two rows.

Temporary files are named ``.NAME.PID@HOST.RANDOM.tmp`` (``temp_prefix``): a kill between
writing and renaming leaves one, and ``remove_stale_temps`` removes those whose writer is gone
(``writer_gone``: on this host, the pid no longer runs; written on another host, older than
``STALE_AFTER_S``). ``FolderLock`` is the exclusive lock of one writer on a folder (see its
docstring and docs/data.md, "Locks").
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import socket
import tempfile
import threading
import time
import uuid
from pathlib import Path

#: A lock (or temporary file) written on another host is stale once its heartbeat (the lock
#: file's modification time) is older than this, in seconds; holders refresh it every
#: ``HEARTBEAT_S`` seconds.
STALE_AFTER_S = 600.0
HEARTBEAT_S = 30.0


def host_name() -> str:
    """This machine's host name, restricted to ``[A-Za-z0-9._-]`` (it goes into file names)."""
    return re.sub(r"[^A-Za-z0-9._-]", "_", socket.gethostname() or "localhost")


def pid_alive(pid: int) -> bool:
    """Whether process ``pid`` runs on this host (a pid we may not signal counts as running)."""
    if pid <= 0:
        return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def writer_gone(pid: int, host: str, mtime: float, now: float | None = None) -> bool:
    """The stale rule shared by locks and temporary files: written on this host by a process that
    no longer runs, or on another host and untouched for ``STALE_AFTER_S`` seconds."""
    if host == host_name():
        return not pid_alive(pid)
    return (time.time() if now is None else now) - mtime > STALE_AFTER_S


def temp_prefix(path) -> str:
    """The prefix of ``atomic_path``'s temporary files for ``path``: ``.NAME.PID@HOST.``."""
    return f".{os.path.basename(os.fspath(path))}.{os.getpid()}@{host_name()}."


_TEMP = re.compile(r"^\..+\.(?P<pid>\d+)@(?P<host>[A-Za-z0-9._-]+)\.[A-Za-z0-9_]+\.tmp$")
_OLD_TEMP = re.compile(r"^\..+\.[A-Za-z0-9_]{8}\.tmp$")   # before temp files named their writer


def remove_stale_temps(folder, recursive: bool = False) -> list[str]:
    """Remove the temporary files of ``atomic_path`` / ``temp_prefix`` in ``folder`` whose writer
    is gone (``writer_gone``); unnamed ones of older versions (``.NAME.XXXXXXXX.tmp``) once
    older than ``STALE_AFTER_S``. Nothing else is touched. Returns the removed paths."""
    folder = Path(folder)
    if not folder.is_dir():
        return []
    removed, now = [], time.time()
    for p in (folder.rglob(".*.tmp") if recursive else folder.glob(".*.tmp")):
        try:
            st = p.lstat()
        except FileNotFoundError:
            continue
        if not p.is_file() or p.is_symlink():
            continue
        m = _TEMP.match(p.name)
        if m:
            stale = writer_gone(int(m["pid"]), m["host"], st.st_mtime, now)
        else:
            stale = bool(_OLD_TEMP.match(p.name)) and now - st.st_mtime > STALE_AFTER_S
        if stale:
            with contextlib.suppress(FileNotFoundError):
                p.unlink()
                removed.append(str(p))
    return removed


@contextlib.contextmanager
def atomic_path(path):
    """Yield a temporary path in ``path``'s folder; on success it replaces ``path``
    (``os.replace``, after the caller closed it), on any exception it is removed and ``path`` is
    left as it was. The new file gets the permissions the umask gives (or the old file's)."""
    path = os.fspath(path)
    folder = os.path.dirname(os.path.abspath(path))
    os.makedirs(folder, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=temp_prefix(path), suffix=".tmp", dir=folder)
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


def read_records(paths, key: str = "sample_id", repeated: list | None = None) -> list[dict]:
    """The records of the given JSONL files, one per ``key`` (the first in file order: a record
    appended twice, by two runs or an interleaving, counts once), sorted by ``key``
    (order-independent output). The ids of records left out are appended to ``repeated``."""
    out: dict[str, dict] = {}
    for p in paths:
        with open(p, encoding="utf-8") as f:
            for line in f:
                if line.strip():
                    rec = json.loads(line)
                    k = str(rec.get(key, ""))
                    if k not in out:
                        out[k] = rec
                    elif repeated is not None:
                        repeated.append(k)
    return [out[k] for k in sorted(out)]


# ---------------------------------------------------------------------- locks
class LockHeld(OSError):
    """Another live process holds the lock: ``holder`` is its lock content (pid, host, ...)."""

    def __init__(self, message: str, holder: dict):
        super().__init__(message)
        self.holder = holder


class FolderLock:
    """The exclusive lock of one writer: the file ``path``, held while the context is open.

    Acquiring never waits (unless ``wait`` is True): a live holder raises ``LockHeld`` naming
    its pid and host. The lock is an ``fcntl.flock`` on the file, which the kernel drops when
    the holder dies, and the file names the holder (JSON: pid, host, start time); the holder
    touches it every ``HEARTBEAT_S`` seconds (a daemon thread). A lock whose ``flock`` is free is
    taken over when its holder is gone by ``writer_gone``: on this host at once (a free flock
    means the holder died); written by another host (whose flock this host may not see, e.g. NFS
    without lock support), only when its heartbeat is older than ``STALE_AFTER_S``. The file is
    emptied, not removed, on release (so that two processes never lock two different files).
    ``what`` names the locked thing in messages (default: the lock file's folder).
    ``took_over``: the stale holder replaced, or None.
    """

    def __init__(self, path, wait: bool = False, what: str | None = None):
        self.path = Path(path)
        self.wait = wait
        self.what = what or str(self.path.parent)
        self.took_over: dict | None = None
        self._fd: int | None = None
        self._stop = threading.Event()
        self._beat: threading.Thread | None = None

    def __enter__(self) -> "FolderLock":
        while True:
            try:
                return self._acquire()
            except LockHeld:
                if not self.wait:
                    raise
                time.sleep(0.2)

    def __exit__(self, *exc) -> None:
        self.release()

    def _acquire(self) -> "FolderLock":
        import fcntl

        self.path.parent.mkdir(parents=True, exist_ok=True)
        fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o644)
        try:
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                holder, deadline = self._holder(fd), time.time() + 2.0
                while not holder and time.time() < deadline:  # locked a moment ago: not yet named
                    time.sleep(0.05)
                    holder = self._holder(fd)
                raise self._held(holder) from None
            holder = self._holder(fd)
            if holder and holder.get("host") != host_name() and not writer_gone(
                    int(holder.get("pid", 0)), str(holder.get("host")), os.fstat(fd).st_mtime):
                raise self._held(holder)
            info = {"pid": os.getpid(), "host": host_name(), "started": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
                    "token": uuid.uuid4().hex}
            os.ftruncate(fd, 0)
            os.pwrite(fd, (json.dumps(info) + "\n").encode(), 0)
            os.fsync(fd)
        except BaseException:
            os.close(fd)
            raise
        self._fd, self.took_over = fd, holder or None
        self._stop.clear()
        self._beat = threading.Thread(target=self._heartbeat, name="getok-lock-heartbeat", daemon=True)
        self._beat.start()
        return self

    def _holder(self, fd: int) -> dict:
        try:
            data = json.loads(os.pread(fd, 4096, 0).decode("utf-8") or "{}")
            return data if isinstance(data, dict) else {}
        except (ValueError, UnicodeDecodeError):
            return {}

    def _held(self, holder: dict) -> LockHeld:
        age = time.time() - self.path.stat().st_mtime if self.path.exists() else 0.0
        who = f"pid {holder.get('pid', '?')} on host {holder.get('host', '?')}"
        return LockHeld(f"{self.what} is in use by {who} (since {holder.get('started', '?')}, "
                        f"heartbeat {age:.0f} s ago; lock file {self.path}). Wait for it to finish; a lock "
                        f"of a process that died is taken over (of another host: after {STALE_AFTER_S:.0f} s "
                        "without heartbeat)", holder)

    def _heartbeat(self) -> None:
        while not self._stop.wait(HEARTBEAT_S):
            with contextlib.suppress(OSError):
                os.utime(self.path)

    def release(self) -> None:
        """Empty the lock file and drop the lock (idempotent)."""
        if self._fd is None:
            return
        import fcntl

        self._stop.set()
        if self._beat is not None:
            self._beat.join()
        with contextlib.suppress(OSError):
            os.ftruncate(self._fd, 0)
        fcntl.flock(self._fd, fcntl.LOCK_UN)
        os.close(self._fd)
        self._fd = None
