"""What the sink has read and not yet settled: what to send next, what may be committed
(pure, no I/O; the clock is the caller's).

Every message read becomes an `Entry` of its partition, in offset order. An entry is
settled once its event was delivered, dead-lettered, or found a duplicate. Then:

- **One per customer, oldest first.** A batch (`next_batch`) takes, for each customer,
  its oldest unsettled entry, if that customer has none in flight and its retry is due:
  a customer's later events never overtake an earlier one, and a batch holds at most one
  event per customer. Other customers of the same partition go on meanwhile.
- **Retries** (`retry_later`): a failed event keeps its place at the head of its
  customer, with its attempts and when it is due again.
- **Commits** (`commits`): a partition's offset is the first entry not yet settled (or
  one past the last read): only once every earlier event of the partition is settled.
- **Rebalances** (`forget`): the entries of partitions taken away are dropped; their new
  owner reads them again from the committed offset.
"""

from collections import deque
from collections.abc import Hashable, Iterable
from dataclasses import dataclass, field
from datetime import datetime
from typing import Generic, TypeVar

from customer_service.sink.events import CustomerEvent, InvalidEvent

P = TypeVar("P", bound=Hashable)


@dataclass(eq=False)
class Entry(Generic[P]):
    """One message read: where it is, what it held, and whether it is settled."""

    partition: P
    offset: int
    key: bytes | None
    value: bytes | None
    event: CustomerEvent | InvalidEvent
    settled: bool = False


@dataclass
class Retry:
    """A customer whose head event failed: how often, and when it is due again.
    `pulled`: made due early (the CRM came back), so its `scheduled` time still stands for
    the retry budget."""

    attempts: int
    due: datetime
    scheduled: datetime
    pulled: bool = False


@dataclass
class Backlog(Generic[P]):
    _partitions: dict[P, deque[Entry[P]]] = field(default_factory=dict)
    # Past the last entry read of each partition (what to commit once all are settled).
    _ends: dict[P, int] = field(default_factory=dict)
    _committed: dict[P, int] = field(default_factory=dict)
    # Each customer's unsettled entries, oldest first.
    _customers: dict[int, deque[Entry[P]]] = field(default_factory=dict)
    _invalid: list[Entry[P]] = field(default_factory=list)
    _retries: dict[int, Retry] = field(default_factory=dict)
    _in_flight: set[int] = field(default_factory=set)

    def add(self, entries: Iterable[Entry[P]]) -> None:
        """Entries read, in each partition's offset order."""
        for entry in entries:
            self._partitions.setdefault(entry.partition, deque()).append(entry)
            self._ends[entry.partition] = entry.offset + 1
            if isinstance(entry.event, InvalidEvent):
                self._invalid.append(entry)
            else:
                self._customers.setdefault(entry.event.customer_id, deque()).append(entry)

    def unsettled(self, partition: P) -> int:
        return len(self._partitions.get(partition, ()))

    def next_batch(self, now: datetime, limit: int) -> list[Entry[P]]:
        """Up to `limit` entries to settle now: the invalid ones, and each customer's oldest
        whose customer is not in flight and not waiting for a retry; they are in flight
        until settled, retried later, or `put_back`."""
        batch = self._invalid[:limit]
        del self._invalid[:limit]
        for customer_id, entries in self._customers.items():
            if len(batch) >= limit:
                break
            if customer_id in self._in_flight:
                continue
            retry = self._retries.get(customer_id)
            if retry is not None and retry.due > now:
                continue
            batch.append(entries[0])
            self._in_flight.add(customer_id)
        return batch

    def ready(self, now: datetime) -> bool:
        """Would `next_batch` take something now?"""
        if self._invalid:
            return True
        for customer_id in self._customers:
            if customer_id in self._in_flight:
                continue
            retry = self._retries.get(customer_id)
            if retry is None or retry.due <= now:
                return True
        return False

    def retry_of(self, entry: Entry[P]) -> Retry | None:
        if isinstance(entry.event, InvalidEvent):
            return None
        return self._retries.get(entry.event.customer_id)

    def settle(self, entry: Entry[P]) -> None:
        """Delivered, dead-lettered or a duplicate: its customer's next event may go."""
        entry.settled = True
        if isinstance(entry.event, InvalidEvent):
            return
        customer_id = entry.event.customer_id
        self._in_flight.discard(customer_id)
        self._retries.pop(customer_id, None)
        entries = self._customers.get(customer_id)
        if entries and entries[0] is entry:
            entries.popleft()
            if not entries:
                del self._customers[customer_id]

    def retry_later(self, entry: Entry[P], retry: Retry) -> None:
        """A failed attempt: the entry stays its customer's head until `retry.due`."""
        assert isinstance(entry.event, CustomerEvent)
        self._in_flight.discard(entry.event.customer_id)
        self._retries[entry.event.customer_id] = retry

    def put_back(self, entry: Entry[P]) -> None:
        """Not attempted (deliveries held): the entry waits as it was."""
        if isinstance(entry.event, InvalidEvent):
            self._invalid.append(entry)
        else:
            self._in_flight.discard(entry.event.customer_id)

    def pull_forward(self, now: datetime) -> None:
        """Every waiting retry due now (the CRM answers again)."""
        for retry in self._retries.values():
            if retry.due > now:
                retry.due = now
                retry.pulled = True

    def next_due(self) -> datetime | None:
        """When the earliest waiting retry is due (None: none waits)."""
        waiting = [r.due for c, r in self._retries.items() if c not in self._in_flight]
        return min(waiting) if waiting else None

    def commits(self) -> dict[P, int]:
        """Per partition whose offset moved: the offset to commit now (its first unsettled
        entry, or past the last read), once every event before it is settled."""
        moved: dict[P, int] = {}
        for partition, entries in self._partitions.items():
            while entries and entries[0].settled:
                entries.popleft()
            offset = entries[0].offset if entries else self._ends[partition]
            if self._committed.get(partition) != offset:
                moved[partition] = offset
        return moved

    def committed(self, offsets: dict[P, int]) -> None:
        self._committed.update(offsets)

    def forget(self, partitions: Iterable[P]) -> None:
        """Drop what was read from `partitions` (taken away by a rebalance)."""
        gone = set(partitions)
        for partition in gone:
            self._partitions.pop(partition, None)
            self._ends.pop(partition, None)
            self._committed.pop(partition, None)
        self._invalid = [e for e in self._invalid if e.partition not in gone]
        for customer_id in list(self._customers):
            kept = deque(e for e in self._customers[customer_id] if e.partition not in gone)
            if kept:
                self._customers[customer_id] = kept
            else:
                del self._customers[customer_id]
                self._retries.pop(customer_id, None)
                self._in_flight.discard(customer_id)

    def __len__(self) -> int:
        return sum(len(entries) for entries in self._partitions.values())
