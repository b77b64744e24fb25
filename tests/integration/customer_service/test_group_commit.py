"""The group commit of the delivery engine (`sync.grouping`), on both databases: many
deliveries' looks and settles in one transaction, each caller with its own answer, and
nothing lost when a caller is cancelled or a group fails."""

import asyncio
import contextlib
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass
from typing import Any, TypeVar

import asyncpg.introspection
import pytest
from sqlalchemy import func, select, text
from sqlalchemy.ext.asyncio import AsyncSession
from support import reset_postgres

from customer_service.columns import utc_now
from customer_service.customers.models import Customer
from customer_service.db import create_engine, create_sessionmaker
from customer_service.sync import outbox, repository
from customer_service.sync.dbwork import BackgroundDatabase
from customer_service.sync.group_statements import DriverStatements, SessionStatements
from customer_service.sync.grouping import RELEASED, GroupCommit, View
from customer_service.sync.models import FailedRequest, Operation, SyncClaim
from customer_service.sync.plan import Batch, plan_next

T = TypeVar("T")

_DRIVER_INTROSPECTION = {v for v in vars(asyncpg.introspection).values() if isinstance(v, str)}


class CountingDatabase(BackgroundDatabase):
    """Counts the transactions the group commit asks for (a group of looks run in
    autocommit mode counts as one)."""

    transactions = 0

    async def run(self, work: Callable[[AsyncSession], Awaitable[T]]) -> T:
        self.transactions += 1
        return await super().run(work)

    async def run_on_driver(self, work: Callable[[Any], Awaitable[T]], transaction: bool) -> T:
        self.transactions += 1
        return await super().run_on_driver(work, transaction)


@dataclass
class Engine:
    db: CountingDatabase
    group: GroupCommit

    async def read(self, query: Any) -> Any:
        return await self.db.run(lambda session: session.scalar(query))

    @property
    def statements(self) -> type[DriverStatements | SessionStatements]:
        """What runs the group's statements on this database (`group_statements`)."""
        return DriverStatements if self.db.dialect == "postgresql" else SessionStatements


@contextlib.asynccontextmanager
async def _engine_on(url: str) -> AsyncIterator[Engine]:
    sql = create_engine(url)
    db = CountingDatabase(create_sessionmaker(sql), slots=2)
    try:
        yield Engine(db, GroupCommit(db, lease_seconds=30.0))
    finally:
        await db.drain()
        await sql.dispose()


@pytest.fixture
async def engine(database_url: str) -> AsyncIterator[Engine]:
    async with _engine_on(database_url) as engine:
        yield engine


async def _customers(engine: Engine, count: int, updates: int = 0) -> list[int]:
    """`count` customers, each with a pending CREATE and `updates` UPDATEs behind it."""

    async def write(session: AsyncSession) -> list[int]:
        ids = []
        for n in range(count):
            now = utc_now()
            customer = Customer(
                first_name=f"G{n}",
                last_name="Group",
                email=f"g{n}@example.com",
                email_key=f"g{n}@example.com",
                version=1,
                created_at=now,
                updated_at=now,
            )
            session.add(customer)
            await session.flush()
            await outbox.enqueue(session, customer, Operation.CREATE)
            for _ in range(updates):
                customer.version += 1
                await outbox.enqueue(session, customer, Operation.UPDATE)
            ids.append(customer.id)
        return ids

    return await engine.db.run(write)


def _batch(view: View) -> Batch:
    batch = plan_next(view.rows, view.now, force=True)
    assert isinstance(batch, Batch)
    return batch


async def test_many_deliveries_share_a_transaction_and_each_gets_its_own_answer(
    engine: Engine,
) -> None:
    ids = await _customers(engine, 20)
    engine.db.transactions = 0
    views = await asyncio.gather(*(engine.group.look(cid, f"token-{cid}") for cid in ids))
    # The first look starts a group at once; the other 19 wait for it and share the next.
    assert engine.db.transactions <= 3
    for cid, view in zip(ids, views, strict=True):
        assert isinstance(view, View)
        assert [row.customer_id for row in view.rows] == [cid]
        assert view.rows[0].operation == Operation.CREATE
    assert await engine.read(select(func.count()).select_from(SyncClaim)) == 20

    engine.db.transactions = 0
    answers = await asyncio.gather(
        *(
            engine.group.settle(_batch(view), f"crm-{cid}", True, f"token-{cid}", force=False)
            for cid, view in zip(ids, views, strict=True)
            if isinstance(view, View)
        )
    )
    assert engine.db.transactions <= 3
    assert answers == [RELEASED] * 20
    assert await engine.read(select(func.count()).select_from(FailedRequest)) == 0
    assert await engine.read(select(func.count()).select_from(SyncClaim)) == 0
    crm_ids = await engine.db.run(
        lambda s: s.execute(select(Customer.id, Customer.crm_id, Customer.crm_synced_version))
    )
    assert {row[0]: (row[1], row[2]) for row in crm_ids} == {cid: (f"crm-{cid}", 1) for cid in ids}


async def test_a_settle_with_more_to_send_renews_the_claim_and_shows_the_rest(
    engine: Engine,
) -> None:
    [cid] = await _customers(engine, 1, updates=2)
    view = await engine.group.look(cid, "mine")
    assert isinstance(view, View) and len(view.rows) == 3
    batch = _batch(view)
    assert [row.operation for row in batch.settles] == [Operation.CREATE]
    after = await engine.group.settle(batch, "crm-1", True, "mine", force=False)
    assert isinstance(after, View)
    assert [row.operation for row in after.rows] == [Operation.UPDATE, Operation.UPDATE]
    # The later requests learnt the CRM id, the view knows the customer's, and the claim
    # is still ours.
    assert {row.crm_id for row in after.rows} == {"crm-1"}
    assert after.crm_id == "crm-1"
    stored = await engine.db.run(lambda s: s.scalars(select(FailedRequest.crm_id)))
    assert set(stored.all()) == {"crm-1"}
    assert await engine.read(select(SyncClaim.owner)) == "mine"


async def test_two_looks_at_one_customer_in_one_group_claim_it_once(engine: Engine) -> None:
    ids = await _customers(engine, 2)
    # The first look runs alone; the three after it share the next group.
    first, second, third, fourth = await asyncio.gather(
        engine.group.look(ids[1], "a"),
        engine.group.look(ids[0], "b"),
        engine.group.look(ids[0], "c"),
        engine.group.look(ids[1], "d"),
    )
    assert isinstance(first, View) and isinstance(second, View)
    assert third is None and fourth is None
    owners = await engine.db.run(
        lambda s: s.execute(select(SyncClaim.customer_id, SyncClaim.owner))
    )
    assert dict(owners.all()) == {ids[1]: "a", ids[0]: "b"}


async def test_a_look_is_not_given_a_claim_that_another_delivery_holds(engine: Engine) -> None:
    [cid] = await _customers(engine, 1)

    async def held(session: AsyncSession) -> bool:
        return bool(await repository.claim_many(session, {cid: "other-replica"}, utc_now(), 30.0))

    assert await engine.db.run(held)
    assert await engine.group.look(cid, "mine") is None
    assert await engine.read(select(SyncClaim.owner)) == "other-replica"


async def test_a_cancelled_caller_still_has_its_delivery_recorded(engine: Engine) -> None:
    [cid] = await _customers(engine, 1)
    view = await engine.group.look(cid, "mine")
    assert isinstance(view, View)
    settling = asyncio.create_task(
        engine.group.settle(_batch(view), "crm-9", True, "mine", force=False)
    )
    await asyncio.sleep(0)  # the settle is queued (its group is under way)
    settling.cancel()
    with pytest.raises(asyncio.CancelledError):
        await settling
    await engine.db.drain()
    # The CRM has it: the row is gone and its id noted, as if nobody had been cancelled.
    assert await engine.read(select(func.count()).select_from(FailedRequest)) == 0
    assert await engine.read(select(Customer.crm_id)) == "crm-9"
    assert await engine.read(select(func.count()).select_from(SyncClaim)) == 0


async def test_a_failing_group_fails_each_caller_and_keeps_every_row(
    engine: Engine, monkeypatch: pytest.MonkeyPatch
) -> None:
    ids = await _customers(engine, 3)
    views = await asyncio.gather(*(engine.group.look(cid, f"t{cid}") for cid in ids))
    statements = engine.statements
    # SQLite: the rows are deleted in the transaction, which then rolls back. PostgreSQL:
    # the group's one statement (atomic) fails.
    method = "settle_and_read" if statements is DriverStatements else "settle_many"
    real = getattr(statements, method)

    async def settle_then_fail(self: Any, *args: Any) -> None:
        if statements is SessionStatements:
            await real(self, *args)
        raise RuntimeError("the database went away")

    monkeypatch.setattr(statements, method, settle_then_fail)
    answers = await asyncio.gather(
        *(
            engine.group.settle(_batch(view), f"crm-{cid}", True, f"t{cid}", force=False)
            for cid, view in zip(ids, views, strict=True)
            if isinstance(view, View)
        ),
        return_exceptions=True,
    )
    assert len(answers) == 3
    assert all(isinstance(a, RuntimeError) for a in answers), answers
    assert await engine.read(select(func.count()).select_from(FailedRequest)) == 3
    assert await engine.read(select(func.count(Customer.crm_id))) == 0
    # The engine goes on: the next group works.
    monkeypatch.setattr(statements, method, real)
    view = views[0]
    assert isinstance(view, View)
    assert await engine.group.settle(_batch(view), "crm-x", True, f"t{ids[0]}", False) is RELEASED


@pytest.fixture
async def pg_engine(postgres_database: str) -> AsyncIterator[Engine]:
    """The group commit on PostgreSQL only: deadlocks are PostgreSQL's."""
    await reset_postgres(postgres_database)
    async with _engine_on(postgres_database) as engine:
        yield engine


async def test_a_group_chosen_as_a_deadlock_victim_runs_again(
    pg_engine: Engine, postgres_database: str
) -> None:
    """A real deadlock: another transaction (say another replica's) holds the claim of
    customer `b` and then reaches for `a`, while a group has claimed `a` and waits for
    `b`. PostgreSQL kills the group's transaction (the other one waits longer before it
    looks for deadlocks); the group runs again once the other has gone, and each look
    gets its answer instead of an error."""
    engine = pg_engine
    a, b = sorted(await _customers(engine, 2))
    other = create_engine(postgres_database)  # a connection of its own
    engine.db.transactions = 0
    try:
        async with create_sessionmaker(other)() as session, session.begin():
            await session.execute(text("SET LOCAL deadlock_timeout = '20s'"))
            assert await repository.claim_many(session, {b: "other-replica"}, utc_now(), 30.0)
            looks = asyncio.gather(engine.group.look(a, "mine-a"), engine.group.look(b, "mine-b"))
            # Wait until the group holds `a` and waits for `b`.
            await eventually_waiting(session)
            # Now reach for `a`: a deadlock, which PostgreSQL breaks by killing the group's
            # transaction. Its claim of `a` is undone, so this one gets it.
            assert await repository.claim_many(session, {a: "other-replica"}, utc_now(), 30.0)
            await session.rollback()  # gone: the group's second run claims both
        views = await asyncio.wait_for(looks, 30)
    finally:
        await other.dispose()
    # The group's first run, killed, and its second. Under load a third: the second run
    # may claim `a` before this session's waiting claim of it wakes up, and deadlock again.
    assert 2 <= engine.db.transactions <= 3
    assert all(isinstance(view, View) for view in views), views
    owners = await engine.db.run(
        lambda s: s.execute(select(SyncClaim.customer_id, SyncClaim.owner))
    )
    assert dict(owners.all()) == {a: "mine-a", b: "mine-b"}


async def eventually_waiting(session: AsyncSession, within: float = 10.0) -> None:
    """Until another backend waits for a lock this session's transaction holds."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + within
    query = text(
        "SELECT count(*) FROM pg_stat_activity WHERE pg_backend_pid() = ANY(pg_blocking_pids(pid))"
    )
    while await session.scalar(query) == 0:
        assert loop.time() < deadline, "the group never waited for the claim held here"
        await asyncio.sleep(0.02)


async def test_on_postgresql_a_look_does_not_wait_for_a_group_of_settles(
    pg_engine: Engine, postgres_database: str
) -> None:
    """Looks have groups of their own there: a look is answered while a settle's group is
    stuck on a lock (here a customer row another transaction holds)."""
    engine = pg_engine
    a, b = await _customers(engine, 2)
    view = await engine.group.look(a, "mine-a")
    assert isinstance(view, View)
    other = create_engine(postgres_database)
    try:
        async with create_sessionmaker(other)() as session, session.begin():
            await session.execute(select(Customer).where(Customer.id == a).with_for_update())
            settling = asyncio.create_task(
                engine.group.settle(_batch(view), "crm-a", True, "mine-a", force=False)
            )
            await eventually_waiting(session)  # the settle's group waits for the row
            looked = await asyncio.wait_for(engine.group.look(b, "mine-b"), 10)
            assert isinstance(looked, View) and [r.customer_id for r in looked.rows] == [b]
            assert not settling.done()
        assert await asyncio.wait_for(settling, 10) is RELEASED
    finally:
        await other.dispose()


async def test_a_look_that_waits_for_the_holders_release_sees_what_it_settled(
    pg_engine: Engine, postgres_database: str
) -> None:
    """The holder settles (deletes the delivered row) and gives the claim back in one
    transaction; a look that waited on that claim must read the queue after that commit,
    or it would send the delivered row again."""
    engine = pg_engine
    [cid] = await _customers(engine, 1, updates=1)
    other = create_engine(postgres_database)
    try:
        async with create_sessionmaker(other)() as session:
            async with session.begin():
                assert await repository.claim_many(session, {cid: "holder"}, utc_now(), 30.0)
            async with session.begin():
                head = await session.scalar(
                    select(func.min(FailedRequest.id)).where(FailedRequest.customer_id == cid)
                )
                await session.execute(
                    text("DELETE FROM failed_requests WHERE id = :id"), {"id": head}
                )
                await repository.release_many(session, ["holder"])
                looking = asyncio.create_task(engine.group.look(cid, "mine"))
                await eventually_waiting(session)  # the look's claim waits for the release
        view = await asyncio.wait_for(looking, 10)
    finally:
        await other.dispose()
    assert isinstance(view, View)
    assert [row.operation for row in view.rows] == [Operation.UPDATE]


async def test_on_postgresql_a_delivered_request_with_nothing_behind_is_settled_in_one_statement(
    pg_engine: Engine, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A live delivery's settle (its row delivered, nothing queued behind it) deletes the
    row, notes the CRM id, gives the claim back and reads the queue in one statement in
    autocommit mode, not a transaction of six round trips."""
    engine = pg_engine
    [cid] = await _customers(engine, 1)
    view = await engine.group.look(cid, "mine")
    assert isinstance(view, View)
    queries: list[str] = []
    real = engine.db.run_on_driver

    async def counted(work: Callable[[Any], Awaitable[T]], transaction: bool) -> T:
        async def logged(connection: Any) -> T:
            with connection.query_logger(lambda record: queries.append(record.query)):
                return await work(connection)

        return await real(logged, transaction)

    monkeypatch.setattr(engine.db, "run_on_driver", counted)
    assert await engine.group.settle(_batch(view), "crm-1", True, "mine", force=False) is RELEASED
    await asyncio.sleep(0)  # asyncpg hands its query log out with call_soon
    # Leave out the driver's own look-ups of types it meets for the first time.
    ours = [q for q in queries if q not in _DRIVER_INTROSPECTION and "'jit'" not in q]
    assert len(ours) == 1, ours
    assert await engine.read(select(func.count()).select_from(FailedRequest)) == 0
    assert await engine.read(select(func.count()).select_from(SyncClaim)) == 0
    assert await engine.read(select(Customer.crm_synced_version)) == 1


async def test_on_postgresql_the_settle_statement_keeps_a_claim_with_requests_left(
    pg_engine: Engine,
) -> None:
    """The one statement gives a claim back only when nothing is left in its queue: with
    updates behind the delivered create, the claim is still held when it returns (the
    renewal or give-back that follows is the plan's), and the rest is read with the CRM
    id just noted."""
    engine = pg_engine
    [cid] = await _customers(engine, 1, updates=2)
    view = await engine.group.look(cid, "mine")
    assert isinstance(view, View)
    batch = _batch(view)

    async def settle(connection: Any) -> Any:
        settled = repository.Settled(cid, [row.id for row in batch.settles], "crm-1", 1)
        return await DriverStatements(connection).settle_and_read([settled], {cid: "mine"})

    queues = await engine.db.run_on_driver(settle, transaction=False)
    rows, crm_id = queues[cid]
    assert [row.operation for row in rows] == [Operation.UPDATE, Operation.UPDATE]
    assert crm_id == "crm-1"
    assert await engine.read(select(SyncClaim.owner)) == "mine"


async def test_a_look_whose_read_fails_gives_its_claims_back(
    pg_engine: Engine, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A group of looks commits its claims before it reads (autocommit): when the read
    fails, the claims are given back rather than left to lapse with their lease."""
    engine = pg_engine
    ids = await _customers(engine, 2)

    async def fail(*args: Any, **kwargs: Any) -> None:
        raise RuntimeError("the read failed")

    monkeypatch.setattr(engine.statements, "queues_and_crm_ids", fail)
    answers = await asyncio.gather(
        *(engine.group.look(cid, f"t{cid}") for cid in ids), return_exceptions=True
    )
    assert all(isinstance(a, RuntimeError) for a in answers), answers
    assert await engine.read(select(func.count()).select_from(SyncClaim)) == 0
