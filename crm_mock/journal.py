"""The durable trace of each call, written in groups: request-log entries and idempotent answers.

Every call on `/api/crm/customers*` leaves a request-log entry, and one that ran with an
`Idempotency-Key` leaves its answer for the key's repeats. Written one transaction each,
as they once were, these two writes were most of the mock's work: a commit per write, each
waiting its turn for SQLite's one connection. The journal queues them instead, and one
background task writes whatever has queued in one transaction (one multi-row insert per
table), then wakes every caller of that group. Nothing waits for a timer: a group is what
arrived while the previous one was being written, so a lone call is written at once and a
busy mock writes fewer, larger groups (group commit, as databases do with their own logs).

`record` returns only once its group is committed, so the promise of the request log
still holds: the answer leaves after its entry is durable, and a client that has the
answer finds the entry. The gateway records an idempotent call's answer while it still
holds the key's lock, so a repeat of the key finds the answer kept.
"""

import asyncio
import logging
from collections.abc import Sequence
from dataclasses import dataclass

from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from crm_mock import store

logger = logging.getLogger(__name__)


@dataclass(frozen=True, slots=True)
class _Pending:
    entries: Sequence[store.RequestLogEntry]
    answer: store.IdempotentAnswer | None
    done: asyncio.Future[None]


class Journal:
    """Group commit of request-log entries and idempotent answers (module doc).

    `start` in the app's lifespan, `close` at its end (it writes what is still queued).
    """

    def __init__(
        self,
        sessionmaker: async_sessionmaker[AsyncSession],
        *,
        retention: int = store.REQUEST_LOG_RETENTION,
        prune_every: int = store.REQUEST_LOG_PRUNE_EVERY,
    ) -> None:
        self._sessionmaker = sessionmaker
        self._retention = retention
        self._prune_every = prune_every
        self._queue: list[_Pending] = []
        self._wake = asyncio.Event()
        self._task: asyncio.Task[None] | None = None
        self._closing = False
        self._writing = False

    def start(self) -> None:
        """Start the writer task."""
        if self._task is None:
            self._task = asyncio.create_task(self._write_groups(), name="crm-journal")

    async def close(self) -> None:
        """Write what is queued, then stop the writer task."""
        self._closing = True
        self._wake.set()
        if self._task is not None:
            await self._task

    @property
    def busy(self) -> bool:
        """Whether a group is being written or calls wait for the next: a call recorded now
        would share a group with others (cheaper than a transaction of its own)."""
        return self._writing or bool(self._queue)

    async def record(
        self,
        entry: store.RequestLogEntry | Sequence[store.RequestLogEntry],
        answer: store.IdempotentAnswer | None = None,
    ) -> None:
        """Write `entry` (or entries: a batch call's, one a record; and `answer`, if any)
        durably; returns once they are committed, all or none.

        Raises what the database raised when they could not be written.
        """
        entries = (entry,) if isinstance(entry, store.RequestLogEntry) else entry
        pending = _Pending(entries, answer, asyncio.get_running_loop().create_future())
        if self._task is None or self._closing:
            # Not running (yet, or any more): write it alone, as the caller waits anyway.
            await self._write([pending])
        else:
            self._queue.append(pending)
            self._wake.set()
        await pending.done

    async def _write_groups(self) -> None:
        while self._queue or not self._closing:
            if not self._queue:
                await self._wake.wait()
                self._wake.clear()
                continue
            group, self._queue = self._queue, []
            self._writing = True
            try:
                await self._write(group)
            finally:
                self._writing = False

    async def _write(self, group: list[_Pending]) -> None:
        try:
            async with self._sessionmaker() as session, session.begin():
                await store.append_request_log_entries(
                    session,
                    [entry for pending in group for entry in pending.entries],
                    retention=self._retention,
                    prune_every=self._prune_every,
                )
                answers = [pending.answer for pending in group if pending.answer is not None]
                await store.keep_idempotent_answers(session, answers)
        except Exception as error:
            if len(group) > 1:
                # One bad row must not cost the others their entries: write each alone.
                for pending in group:
                    await self._write([pending])
                return
            pending = group[0]
            if not pending.done.done():
                pending.done.set_exception(error)
            return
        for pending in group:
            if not pending.done.done():  # a caller that was cancelled no longer waits
                pending.done.set_result(None)
