"""Pure planning of one customer's queue: what to send next, or why to wait.

A customer's rows are taken oldest first. The head decides:
- dead: the queue waits for an operator (replay or discard), so the CRM never gets a
  newer state before an older one that was never delivered;
- not due yet (and not forced): the queue waits for its backoff;
- otherwise the head is sent, and a run of UPDATEs right behind an UPDATE head is
  coalesced: only the newest state is sent, and all of them are settled by its answer.
"""

from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime
from enum import StrEnum

from customer_service.sync.models import Operation, OutboxRow, RequestStatus


class Hold(StrEnum):
    EMPTY = "empty"
    DEAD = "dead"
    NOT_DUE = "not-due"


@dataclass(frozen=True)
class Batch:
    """`send` carries the state to deliver; `settles` are every row its success removes."""

    send: OutboxRow
    settles: list[OutboxRow]


def plan_next(rows: Sequence[OutboxRow], now: datetime, force: bool) -> Batch | Hold:
    """The next batch of a customer's queue (`rows` oldest first), or why it waits."""
    if not rows:
        return Hold.EMPTY
    head = rows[0]
    if head.status == RequestStatus.DEAD:
        return Hold.DEAD
    if not force and head.next_attempt_at > now:
        return Hold.NOT_DUE
    if head.operation != Operation.UPDATE:
        return Batch(send=head, settles=[head])
    run = [head]
    for row in rows[1:]:
        if row.operation != Operation.UPDATE or row.status == RequestStatus.DEAD:
            break
        run.append(row)
    return Batch(send=run[-1], settles=run)
