"""Group commit of the delivery engine's bookkeeping: many deliveries, one transaction.

Each delivery needs two short transactions besides its CRM call: before it, claim the
customer and read its queue (`look`); after it, record the answer, read the queue again,
and renew the claim or give it back (`settle`). Run one by one, they were most of the
service's CPU per delivery (profiled: `bench/README.md`). Here every look and settle
asked for while the previous group's transaction runs waits for the next one, which does
them all with a fixed number of statements, whatever their number:

1. the settles: delete the delivered rows, note the CRM ids and versions (executemany);
2. the looks: claim their customers in one multi-row upsert;
3. every queue the group needs, the settled customers' and the claimed ones', read in one
   statement (one round trip fewer than a read each);
4. a create's new CRM id given to the requests behind it (only where there are some);
   each settle then either gives its claim back (nothing to send now) or renews it.

A look at a customer whose claim a settle of the same group gives back finds it still
held, as a look an instant earlier would: the dispatcher looks again shortly after, a
retry pass at its follow-up.

On PostgreSQL every group runs in autocommit mode. A group of settles is one statement
(`group_statements.SETTLE_AND_READ`: steps 1, 3 and the give-backs of 4 at once), and
only customers with requests left need more. The looks have groups of their own, run
beside the settles' (`GroupCommit`):
there every statement is a round trip, and a kicked delivery waited for the group in
flight and then for its own, about fourteen round trips on a busy event loop before its
CRM call. A group of looks alone is two statements in autocommit mode. Measured on
PostgreSQL at 378 writes/s, three runs each, interleaved: sync lag p99 137-210 ms
against 271-429 ms with shared groups, p50 59-89 ms against 107-210 ms; CPU per synced
write under full load 1.7-1.9 ms against 1.9.

A lone delivery does not wait: with nothing in flight its group starts at once. Every
group runs through `BackgroundDatabase`: shielded, so a caller that is cancelled stops
waiting but its settle still commits (the row is gone and the CRM has it: nothing is lost
or sent twice), within the engine's connection budget, drained at shutdown. A group that
fails fails each of its callers, whose rows stay in the outbox for the next attempt.
"""

import asyncio
import contextlib
import logging
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from datetime import datetime
from functools import partial
from typing import Any

from sqlalchemy.exc import DBAPIError
from sqlalchemy.ext.asyncio import AsyncSession
from sqlalchemy.orm.attributes import set_committed_value

from customer_service.columns import utc_now
from customer_service.sync import repository
from customer_service.sync.dbwork import BackgroundDatabase
from customer_service.sync.group_statements import (
    DriverStatements,
    GroupStatements,
    Queues,
    SessionStatements,
)
from customer_service.sync.models import FailedRequest
from customer_service.sync.plan import Batch, plan_next


class Released:
    """The claim was given back in the transaction that recorded the last answer."""


RELEASED = Released()


@dataclass(frozen=True)
class View:
    """One transaction's look at a customer's queue, oldest first."""

    rows: list[FailedRequest]
    crm_id: str | None
    now: datetime


log = logging.getLogger(__name__)

DEADLOCK_DETECTED = "40P01"  # PostgreSQL's SQLSTATE
DEADLOCK_ATTEMPTS = 3

# A caller's future and what it is to be told.
_Answer = tuple["asyncio.Future[Any]", object]


@dataclass
class _Look:
    customer_id: int
    token: str
    answer: "asyncio.Future[View | None]"
    # The caller was cancelled while the group ran: a claim it took is given back.
    abandoned: bool = False


@dataclass
class _Settle:
    batch: Batch
    crm_id: str | None
    learnt: bool
    token: str
    force: bool
    answer: "asyncio.Future[View | Released | None]"

    @property
    def customer_id(self) -> int:
        return self.batch.send.customer_id


@dataclass
class _Group:
    looks: list[_Look] = field(default_factory=list)
    settles: list[_Settle] = field(default_factory=list)

    def __bool__(self) -> bool:
        return bool(self.looks or self.settles)

    def fail(self, error: BaseException) -> None:
        answers: list[asyncio.Future[Any]] = [op.answer for op in self.looks]
        answers += [op.answer for op in self.settles]
        for answer in answers:
            if not answer.done():
                answer.set_exception(error)


class _Lane:
    """Operations waiting for the next group of one kind, and the task running groups."""

    def __init__(self, name: str) -> None:
        self.name = name
        self.next = _Group()
        self.flusher: asyncio.Task[None] | None = None


class GroupCommit:
    """On PostgreSQL, looks are grouped apart and run beside the settles' groups, both in
    autocommit mode (`_look_alone`, `_settle_alone`): a look then waits for the two round
    trips of its own group, not for a whole transaction of settles and then its own. There
    the groups' statements run on the driver's connection
    (`group_statements.DriverStatements`).
    SQLite has no round trips to save and one writer at a time: there, looks and settles
    share each group, run through SQLAlchemy."""

    def __init__(self, db: BackgroundDatabase, lease_seconds: float) -> None:
        self._db = db
        self._lease = lease_seconds
        self._main = _Lane("delivery-group-commit")
        self._on_driver = db.dialect == "postgresql"
        self._looks = _Lane("delivery-look-group") if self._on_driver else self._main

    async def look(self, customer_id: int, token: str) -> View | None:
        """Claim `customer_id` under `token` and read its queue; None when another
        delivery (here or in another replica) holds the claim."""
        answer: asyncio.Future[View | None] = asyncio.get_running_loop().create_future()
        look = _Look(customer_id, token, answer)
        self._looks.next.looks.append(look)
        self._start(self._looks)
        try:
            return await asyncio.shield(answer)
        except asyncio.CancelledError:
            # The group commits the claim all the same; nobody would deliver the customer
            # or give it back, and it would wait a whole lease for another delivery.
            if answer.done() and not answer.cancelled() and answer.exception() is None:
                if answer.result() is not None:
                    self._give_back([token])  # the group was done as we were cancelled
            else:
                look.abandoned = True  # the flusher gives it back once committed
            raise

    async def settle(
        self, batch: Batch, crm_id: str | None, learnt: bool, token: str, force: bool
    ) -> View | Released | None:
        """Record `batch` delivered and read what is next: with more to send, the claim
        is renewed (None if it was lost); with nothing, it is given back (RELEASED)."""
        answer: asyncio.Future[View | Released | None] = asyncio.get_running_loop().create_future()
        self._main.next.settles.append(_Settle(batch, crm_id, learnt, token, force, answer))
        self._start(self._main)
        return await asyncio.shield(answer)

    def _start(self, lane: _Lane) -> None:
        if lane.flusher is None or lane.flusher.done():
            lane.flusher = asyncio.create_task(self._flush(lane), name=lane.name)

    async def _flush(self, lane: _Lane) -> None:
        while lane.next:
            group, lane.next = lane.next, _Group()
            try:
                answers = await self._run(group)
            except Exception as error:
                group.fail(error)
                continue
            except BaseException:
                # The flusher itself was cancelled (the loop is closing): nobody is left
                # to run the waiting groups.
                group.fail(RuntimeError("the delivery engine stopped"))
                lane.next.fail(RuntimeError("the delivery engine stopped"))
                raise
            # Committed: hand out the answers, and give back what abandoned looks took.
            for answer, result in answers:
                if not answer.done():
                    answer.set_result(result)
            abandoned = [op.token for op in group.looks if op.abandoned and op.answer.result()]
            if abandoned:
                self._give_back(abandoned)

    def _give_back(self, tokens: list[str]) -> None:
        """Release claims nobody will use, in the background (registered with the
        database work at once, so a shutdown's `drain` waits for it)."""
        self._db.submit(partial(repository.release_many, owners=tokens))

    async def _run(self, group: _Group) -> list[_Answer]:
        """The group's transaction, run again (it rolled back whole) when PostgreSQL chose
        it as the victim of a deadlock: another replica's group (or this one's ad hoc
        transactions) locking some of the same claims in another order."""
        for attempt in range(DEADLOCK_ATTEMPTS):
            try:
                if not self._on_driver:
                    return await self._db.run(partial(self._in_session, group=group))
                # On PostgreSQL a lane holds looks only or settles only, each run in
                # autocommit mode.
                alone = self._settle_alone if group.settles else self._look_alone
                work = partial(self._on_connection, apply=alone, group=group)
                return await self._db.run_on_driver(work, transaction=False)
            except Exception as error:
                if _sqlstate(error) != DEADLOCK_DETECTED or attempt == DEADLOCK_ATTEMPTS - 1:
                    raise
                log.info("delivery group chosen as a deadlock victim; running it again")
        raise AssertionError("unreachable")

    async def _in_session(self, session: AsyncSession, group: _Group) -> list[_Answer]:
        return await self._apply(SessionStatements(session), group)

    @staticmethod
    async def _on_connection(connection: Any, apply: "_OnDriver", group: _Group) -> list[_Answer]:
        return await apply(DriverStatements(connection), group)

    async def _look_alone(self, statements: GroupStatements, group: _Group) -> list[_Answer]:
        """A group of looks only, in autocommit mode: the claims, then the queues of the
        customers claimed. Two statements, not one with the read in a CTE: a statement
        reads one snapshot, taken before its claim may wait for the holder's release, and
        would then miss the rows that holder's settle deleted in the same commit."""
        now = utc_now()
        wanted = _first_look_wins(group.looks)
        claimed = await statements.claim_many(wanted, now, self._lease)
        if not claimed:
            return _look_answers(group.looks, wanted, {}, now)
        try:
            queues = await statements.queues_and_crm_ids(sorted(claimed))
        except BaseException:
            # The claims are committed: give them back (else they lapse with the lease).
            with contextlib.suppress(Exception):
                await statements.release_many([wanted[c] for c in claimed])
            raise
        found = {cid: queues.get(cid, ([], None)) for cid in claimed}
        return _look_answers(group.looks, wanted, found, now)

    async def _settle_alone(self, statements: DriverStatements, group: _Group) -> list[_Answer]:
        """A group of settles only (PostgreSQL), in autocommit mode: one statement records
        them all, gives back the claims with nothing left to send and reads what is left
        (`DriverStatements.settle_and_read`); only a customer with requests left needs
        more (its CRM id learnt, its claim renewed or given back). A live delivery's
        settle, the common case, is one round trip instead of a transaction of six.

        Each statement commits on its own. The first is the settle's whole record (rows
        deleted with the versions noted, atomic as one statement is); a failure after it
        leaves a claim to lapse with its lease, nothing sent twice. Run again after a
        deadlock, each statement finds its work done and does nothing twice."""
        now = utc_now()
        settles = group.settles
        queues = await statements.settle_and_read(
            [_settled(op) for op in settles], {op.customer_id: op.token for op in settles}
        )
        left = [op for op in settles if op.customer_id in queues]
        answers = await self._settle_all(statements, left, queues, now) if left else []
        answers += [(op.answer, RELEASED) for op in settles if op.customer_id not in queues]
        return answers

    async def _apply(self, statements: SessionStatements, group: _Group) -> list[_Answer]:
        """One group (SQLite), in the caller's transaction; its answers, to hand out once it has
        committed. The settles' rows go first, then the looks' claims, then one read of
        every queue the group needs, then the settles' claims are given back or renewed."""
        now = utc_now()
        settles, looks = group.settles, group.looks
        if settles:
            await statements.settle_many([_settled(op) for op in settles])
        wanted = _first_look_wins(looks)
        claimed = await statements.claim_many(wanted, now, self._lease)
        read = {op.customer_id for op in settles} | claimed
        queues = await statements.queues_and_crm_ids(sorted(read)) if read else {}
        answers = await self._settle_all(statements, settles, queues, now) if settles else []
        # A claimed customer with nothing queued has no entry in `queues`.
        found = {cid: queues.get(cid, ([], None)) for cid in claimed}
        return answers + _look_answers(looks, wanted, found, now)

    async def _settle_all(
        self,
        statements: GroupStatements,
        settles: list[_Settle],
        queues: Queues,
        now: datetime,
    ) -> list[_Answer]:
        # A create's CRM id is new: the customer's requests behind it, if any, learn it.
        learnt = {
            op.customer_id: op.crm_id
            for op in settles
            if op.learnt and op.crm_id is not None and op.customer_id in queues
        }
        await statements.learn_crm_ids(learnt)
        for customer_id, new_id in learnt.items():
            for row in queues[customer_id][0]:
                if row.crm_id is None:
                    set_committed_value(row, "crm_id", new_id)
        done: list[str] = []
        renew: dict[int, str] = {}
        views: dict[str, View] = {}
        for op in settles:
            rows, crm_id = queues.get(op.customer_id, ([], None))
            if isinstance(plan_next(rows, now, force=op.force), Batch):
                renew[op.customer_id] = op.token
                views[op.token] = View(rows, crm_id, now)
            else:
                done.append(op.token)
        await statements.release_many(done)
        renewed = await statements.claim_many(renew, now, self._lease)
        answers: list[_Answer] = []
        for op in settles:
            view = views.get(op.token)
            if view is None:
                result: View | Released | None = RELEASED
            else:
                result = view if op.customer_id in renewed else None
            answers.append((op.answer, result))
        return answers


_OnDriver = Callable[[DriverStatements, _Group], Awaitable[list[_Answer]]]


def _sqlstate(error: BaseException) -> str | None:
    """The SQLSTATE of a database error, raised through SQLAlchemy or by the driver."""
    code = getattr(error, "sqlstate", None)
    if code is None and isinstance(error, DBAPIError):
        code = getattr(error.orig, "sqlstate", None)
    return code if isinstance(code, str) else None


def _settled(op: _Settle) -> repository.Settled:
    batch = op.batch
    return repository.Settled(
        op.customer_id, [row.id for row in batch.settles], op.crm_id, batch.send.version
    )


def _first_look_wins(looks: list[_Look]) -> dict[int, str]:
    """The claim each looked-at customer is wanted under: two looks at one customer in
    one group, the first may claim it, the other finds it held, as it would in a
    transaction of its own."""
    wanted: dict[int, str] = {}
    for op in looks:
        wanted.setdefault(op.customer_id, op.token)
    return wanted


def _look_answers(
    looks: list[_Look],
    wanted: dict[int, str],
    found: dict[int, tuple[list[FailedRequest], str | None]],
    now: datetime,
) -> list[_Answer]:
    """Each look's answer: its view when its customer is now claimed under its token (in
    `found`, with the queue), None when another holds the claim."""
    answers: list[_Answer] = []
    for look in looks:
        if look.customer_id in found and wanted[look.customer_id] == look.token:
            rows, crm_id = found[look.customer_id]
            answers.append((look.answer, View(rows, crm_id, now)))
        else:
            answers.append((look.answer, None))
    return answers
