"""What the sink makes of an event before and after its call (pure, no I/O).

Before: an event at or below the rank its customer's newest settled event has
(`ledger.Settled`) is not sent again (`repeat_of`): the same eventId gets the status it
had, an older one is `applied` (the CRM holds a newer state already). Two kinds are sent
all the same, being reconciliation's repairs, not duplicates: another eventId of the very
rank settled (a CREATE or UPDATE queued again with the customer's current version, for a
record missing or edited in the CRM), and a DELETE of a record no customer of ours has
(version 0).

After: `judge` reads the connector's outcome with the service's retry policy
(`sync.retry.judge_failure`: RETRY_BACKOFF_*, RETRY_MAX_ATTEMPTS, `Retry-After`):

- `Delivered` -> `Applied`, with the CRM id (a DELETE leaves none);
- a permanent refusal (a 4xx other than 401, 403, 408, 409, 425, 429) or the last
  attempt -> `Dead`: the event goes to KAFKA_DLQ_TOPIC, its status is `dead`, and the
  customer's later events go on after it;
- anything else -> `Again`: retried when due, the customer's later events behind it;
  `hold` names a failure of the CRM as a whole (no answer, 401, 403, 429, 502, 503, 504
  for the whole call), which stops every send until a probe finds the CRM back.
"""

from dataclasses import dataclass
from datetime import datetime

from customer_service.sink.backlog import Retry
from customer_service.sink.events import APPLIED, CustomerEvent
from customer_service.sink.ledger import Settled
from customer_service.sync.hold import HoldKind, hold_kind
from customer_service.sync.models import Operation
from customer_service.sync.outcome import Delivered, Outcome
from customer_service.sync.retry import RetryPolicy, Urgency, judge_failure, parse_retry_after


@dataclass(frozen=True)
class Repeat:
    """An event settled before: no call, its status published again."""

    status: str
    crm_id: str | None
    error: str | None


@dataclass(frozen=True)
class Applied:
    crm_id: str | None


@dataclass(frozen=True)
class Dead:
    error: str
    attempts: int


@dataclass(frozen=True)
class Again:
    retry: Retry
    error: str
    hold: HoldKind | None


Verdict = Applied | Dead | Again


def repeat_of(event: CustomerEvent, settled: Settled | None) -> Repeat | None:
    """None when `event` is to be sent (newer than what its customer had settled, or a
    repair: module doc), else what to answer."""
    if settled is None or event.rank > settled.rank:
        return None
    if event.event_id == settled.event_id:
        return Repeat(settled.status, settled.crm_id, settled.error)
    if event.rank == settled.rank or event.record_delete:
        return None
    return Repeat(APPLIED, settled.crm_id, None)


def judge(
    event: CustomerEvent,
    outcome: Outcome,
    known_crm_id: str | None,
    retry: Retry | None,
    policy: RetryPolicy,
    now: datetime,
) -> Verdict:
    """What one attempt at `event` came to; `retry`: its earlier failures, if any."""
    if isinstance(outcome, Delivered):
        if event.operation == Operation.DELETE:
            return Applied(None)
        return Applied(outcome.crm_id or known_crm_id)
    attempts = retry.attempts if retry else 0
    scheduled = retry.scheduled if retry else now
    verdict = judge_failure(
        policy=policy,
        attempts=attempts,
        status=outcome.status,
        retry_after=parse_retry_after(outcome.retry_after, now),
        now=now,
        scheduled=scheduled,
        urgency=Urgency.RECOVERY if retry and retry.pulled else Urgency.DUE,
    )
    if verdict.dead:
        return Dead(outcome.error, verdict.attempts)
    hold = hold_kind(outcome.status, outcome.unanswered) if outcome.whole_call else None
    due = verdict.next_attempt_at
    return Again(Retry(verdict.attempts, due, due), outcome.error, hold)
