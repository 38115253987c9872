"""One writer per store: an advisory lock object inside the store.

A writer creates ``<store>/.jsaectl.lock`` (``.jsaectl.lock.shard-I-of-N`` for a shard of a
sharded harvest, since shards of one harvest share a store by design) holding its host, pid
and start time, and removes it when it stops. On a local disk the file is created with
``O_CREAT | O_EXCL``, so of two writers exactly one gets it. A lock whose process is gone
(same host, pid no longer running or reused) is stale and taken over; a lock from another
host is trusted until removed by hand.

On object stores (``s3://``, ``gs://``, ...) creation is check-then-write, not atomic: two
writers starting within the same second may both proceed. Give concurrent runs their own
``--out`` there.
"""

from __future__ import annotations

import json
import os
import socket
import threading
import time
from dataclasses import dataclass, field
from typing import Any

from jsaectl.errors import StoreError

LOCK = ".jsaectl.lock"
_HELD: dict[str, int] = {}  # lock path -> how many times this process holds it (re-entrant)
_GUARD = threading.Lock()


def _proc_start(pid: int) -> str | None:
    """The kernel's start time of ``pid`` (Linux), so a reused pid is not mistaken for the writer."""
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().rsplit(")", 1)[1].split()[19]
    except (OSError, IndexError):
        return None


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def _me() -> dict[str, Any]:
    return {"host": socket.gethostname(), "pid": os.getpid(), "proc_start": _proc_start(os.getpid()),
            "since": time.strftime("%Y-%m-%d %H:%M:%S %Z")}


def _stale(holder: dict[str, Any]) -> bool:
    if holder.get("host") != socket.gethostname():
        return False
    pid = holder.get("pid")
    if not isinstance(pid, int) or not _alive(pid):
        return True
    started = holder.get("proc_start")
    return started is not None and _proc_start(pid) not in (None, started)


def _mine(holder: dict[str, Any]) -> bool:
    return holder.get("host") == socket.gethostname() and holder.get("pid") == os.getpid()


def lock_name(shard: tuple[int, int] | None = None) -> str:
    return LOCK if shard is None or shard[1] <= 1 else f"{LOCK}.shard-{shard[0]}-of-{shard[1]}"


def busy_message(url: str, holder: dict[str, Any]) -> str:
    return f"{url} is being written by pid {holder.get('pid')} on {holder.get('host')} since {holder.get('since')}"


class _Files:
    """Local or fsspec file operations on the lock objects of one store."""

    def __init__(self, url: str, local: bool) -> None:
        self.url, self.local = url, local
        if not local:
            import fsspec

            self.fs, self.root = fsspec.core.url_to_fs(url)

    def path(self, name: str) -> str:
        return os.path.join(self.url, name) if self.local else f"{self.root.rstrip('/')}/{name}"

    def names(self) -> list[str]:
        try:
            if self.local:
                return [n for n in os.listdir(self.url) if n.startswith(LOCK)]
            return [p.rsplit("/", 1)[-1] for p in self.fs.ls(self.root, detail=False) if p.rsplit("/", 1)[-1].startswith(LOCK)]
        except (FileNotFoundError, NotADirectoryError):
            return []

    def read(self, name: str) -> dict[str, Any] | None:
        try:
            if self.local:
                with open(self.path(name)) as f:
                    raw = f.read()
            else:
                raw = self.fs.cat_file(self.path(name)).decode()
        except FileNotFoundError:
            return None
        try:
            holder = json.loads(raw)
        except json.JSONDecodeError:  # caught mid-write, or damaged: treat as held right now
            return {"host": "?", "pid": "?", "since": "?"}
        return holder if isinstance(holder, dict) else {}

    def create(self, name: str, holder: dict[str, Any]) -> bool:
        data = json.dumps(holder).encode()
        if self.local:
            os.makedirs(self.url, exist_ok=True)
            try:
                fd = os.open(self.path(name), os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o644)
            except FileExistsError:
                return False
            with os.fdopen(fd, "wb") as f:
                f.write(data)
            return True
        if self.fs.exists(self.path(name)):
            return False
        self.fs.pipe_file(self.path(name), data)
        return self.read(name) == holder  # last writer wins: did we?

    def remove(self, name: str) -> None:
        try:
            if self.local:
                os.remove(self.path(name))
            else:
                self.fs.rm_file(self.path(name))
        except FileNotFoundError:
            pass


def live_holder(url: str, local: bool, shard: tuple[int, int] | None = None) -> dict[str, Any] | None:
    """Who else is writing ``url`` in a way that excludes us (None: nobody alive). A shard is
    excluded by an unsharded writer and by the same shard; an unsharded writer by anyone."""
    files = _Files(url, local)
    mine = lock_name(shard)
    for name in files.names():
        if mine != LOCK and name not in (LOCK, mine):
            continue  # another shard of the same harvest: expected
        holder = files.read(name)
        if holder is not None and not _mine(holder) and not _stale(holder):
            return holder
    return None


@dataclass
class StoreLock:
    """A held lock; ``release()`` gives it back."""

    url: str
    local: bool
    name: str
    _files: _Files = field(repr=False, default=None)  # type: ignore[assignment]

    def release(self) -> None:
        key = self._files.path(self.name)
        with _GUARD:
            _HELD[key] -= 1
            if _HELD[key] > 0:
                return
            del _HELD[key]
        self._files.remove(self.name)


def acquire(url: str, local: bool, shard: tuple[int, int] | None = None) -> StoreLock:
    """Take the store's write lock, or fail at once naming the process that holds it."""
    files = _Files(url, local)
    name = lock_name(shard)
    key = files.path(name)
    with _GUARD:
        if key in _HELD:
            _HELD[key] += 1
            return StoreLock(url, local, name, files)
    for _ in range(3):
        other = live_holder(url, local, shard)
        if other is not None:
            raise StoreError(busy_message(url, other),
                             hint="wait for it to finish, or stop it; a second writer would corrupt the store")
        holder = files.read(name)
        if holder is not None and (_stale(holder) or _mine(holder)):
            files.remove(name)  # left by a process that died (SIGKILL, power loss)
        if files.create(name, _me()):
            with _GUARD:
                _HELD[key] = 1
            return StoreLock(url, local, name, files)
    holder = files.read(name) or {}
    raise StoreError(busy_message(url, holder), hint="wait for it to finish, or stop it")
