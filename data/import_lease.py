"""Who is still writing an import: a lease per import batch, held by the importing process while it writes.

An import's rows stay hidden until it publishes them (data.store); if its process dies (kill -9, a crash, a
power cut) they would stay hidden for ever and block their content's re-import as duplicates. A dead import must
be told from a live one, possibly in another process or on another host, at once and without guessing from its
age. So the lease is a lock the operating system or the database server releases by itself when its holder dies:

- PostgreSQL: a session advisory lock, on a connection the import keeps open; the server drops it when that
  connection ends (the process died: its socket closed).
- SQLite: an exclusive ``flock`` on a file next to the database (``<db>-imports/``); the kernel drops it when the
  process dies. Every process using a SQLite file shares its host, so this sees them all.
- A database without a file (in-memory SQLite): only this process can see it, so a set in this process.

An import takes its batch's lease before it creates the batch's row, and gives it back only after it published
or discarded the batch; so a batch row whose lease anybody can take belongs to an import that is gone.
"""

from __future__ import annotations

import fcntl
import hashlib
import os
from pathlib import Path
from typing import TYPE_CHECKING

from sqlalchemy import func, select

if TYPE_CHECKING:
    from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine

# Leases of databases without a file, held by this process.
_HELD_HERE: set[str] = set()


def _key(batch_id: str) -> int:
    """The batch's PostgreSQL advisory lock key (a signed 64-bit integer)."""
    return int.from_bytes(hashlib.sha256(batch_id.encode()).digest()[:8], "big", signed=True)


class ImportLease:
    """The lease of one import batch, taken with ``take``; ``release`` gives it back."""

    def __init__(self, batch_id: str, conn: AsyncConnection | None = None, fd: int | None = None,
                 path: Path | None = None) -> None:
        self.batch_id, self._conn, self._fd, self._path = batch_id, conn, fd, path

    @classmethod
    async def take(cls, engine: AsyncEngine, batch_id: str) -> ImportLease | None:
        """The batch's lease, or None when another import (in any process) holds it: that import is alive."""
        if engine.dialect.name == "postgresql":
            # Autocommit: the connection waits idle for the whole import, it must not hold a transaction open.
            conn = await (await engine.connect()).execution_options(isolation_level="AUTOCOMMIT")
            try:
                if await conn.scalar(select(func.pg_try_advisory_lock(_key(batch_id)))):
                    return cls(batch_id, conn=conn)
            except BaseException:
                await conn.invalidate()
                raise
            await conn.close()
            return None
        database = engine.url.database
        if not database or database == ":memory:" or database.startswith("file:"):
            if batch_id in _HELD_HERE:
                return None
            _HELD_HERE.add(batch_id)
            return cls(batch_id)
        path = Path(f"{database}-imports") / f"{hashlib.sha256(batch_id.encode()).hexdigest()[:32]}.lock"
        fd = _flock(path)
        return None if fd is None else cls(batch_id, fd=fd, path=path)

    async def release(self) -> None:
        if self._conn is not None:
            try:
                await self._conn.scalar(select(func.pg_advisory_unlock(_key(self.batch_id))))
                await self._conn.close()
            except BaseException:
                # Closed for good: the server drops the lock with the connection, not back to the pool holding it.
                await self._conn.invalidate()
                raise
        elif self._fd is not None and self._path is not None:
            self._path.unlink(missing_ok=True)  # before the unlock: a file nobody holds is never left behind
            os.close(self._fd)
        else:
            _HELD_HERE.discard(self.batch_id)


def _flock(path: Path) -> int | None:
    """The open lock file, locked exclusively; None when another holds it. (Microseconds: not worth a thread.)"""
    path.parent.mkdir(exist_ok=True)
    fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        os.close(fd)
        return None
    return fd
