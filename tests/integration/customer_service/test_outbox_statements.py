"""Every delivery statement (`sync.repository`), one set of cases run on both databases,
and the engine's batch bookkeeping on top of them: one transaction to claim and read a
batch, one to settle it, whatever its size; each customer settled on its own outcome."""

from collections.abc import AsyncIterator, Callable
from datetime import timedelta
from typing import Any

import pytest
from outbox_support import customers_with_requests, outbox_left
from sqlalchemy import event, func, select
from sqlalchemy.ext.asyncio import AsyncEngine
from support import FakeConnector

from customer_service.columns import utc_now
from customer_service.config import Settings
from customer_service.customers.models import Customer
from customer_service.db import create_sessionmaker
from customer_service.sync import repository, unconfirmed
from customer_service.sync.connector import Change
from customer_service.sync.engine import DeliveryEngine
from customer_service.sync.models import (
    FailedRequest,
    Operation,
    RequestStatus,
    SyncClaim,
    UnconfirmedEvent,
)
from customer_service.sync.outcome import Delivered, Failed, Outcome
from customer_service.sync.retry import Urgency

LEASE = 30.0


@pytest.fixture
async def session_of(sql_engine: AsyncEngine) -> AsyncIterator[Callable[[], Any]]:
    yield create_sessionmaker(sql_engine)


async def _scalar(sessionmaker: Any, query: Any) -> Any:
    async with sessionmaker() as session:
        return await session.scalar(query)


async def test_a_claim_is_ours_until_it_expires_and_only_its_owner_renews_or_releases_it(
    session_of: Any,
) -> None:
    a, b, c = await customers_with_requests(session_of, 3)
    now = utc_now()
    async with session_of() as session, session.begin():
        assert await repository.claim(session, [b, a], "one", now, LEASE) == {a, b}
        # Held by "one": not another's; "one" again keeps it (a renewal by claim).
        assert await repository.claim(session, [a, c], "two", now, LEASE) == {c}
        assert await repository.claim(session, [a], "one", now, LEASE) == {a}
        # An expired claim is taken over.
        later = now + timedelta(seconds=LEASE + 1)
        assert await repository.claim(session, [c], "three", later, LEASE) == {c}
        assert await repository.renew(session, "one", now, LEASE) == 2
        assert await repository.renew(session, "nobody", now, LEASE) == 0
        await repository.release(session, "one", [a])
        owners = dict((await session.execute(select(SyncClaim.customer_id, SyncClaim.owner))).all())
        assert owners == {b: "one", c: "three"}
        await repository.release(session, "one")
        await repository.release(session, "two", [])  # nothing named: nothing given back
        owners = dict((await session.execute(select(SyncClaim.customer_id, SyncClaim.owner))).all())
        assert owners == {c: "three"}


async def test_queues_are_read_oldest_first_with_the_crm_id_of_the_customer_row(
    session_of: Any,
) -> None:
    a, b = await customers_with_requests(session_of, 2, updates=3)
    async with session_of() as session, session.begin():
        await session.execute(
            Customer.__table__.update().where(Customer.id == a).values(crm_id="crm-a")
        )
    async with session_of() as session:
        queues = await repository.queues_and_crm_ids(session, [a, b, 999_999], limit=3)
    assert set(queues) == {a, b}  # no request: left out
    rows, crm_id = queues[a]
    assert crm_id == "crm-a"
    assert [row.version for row in rows] == [1, 2, 3]
    assert [row.operation for row in rows] == ["CREATE", "UPDATE", "UPDATE"]
    assert queues[b][1] is None


async def test_rows_with_ids_past_two_to_the_31_are_read_settled_and_failed(
    session_of: Any,
) -> None:
    """Outbox ids are BIGINT: a batch binds them as a BIGINT array on PostgreSQL (an
    INTEGER one refuses an id past 2**31, as a long-lived outbox reaches)."""
    a, b = await customers_with_requests(session_of, 2)
    big = 2**31 + 7
    async with session_of() as session, session.begin():
        for offset, customer_id in enumerate((a, b)):
            await session.execute(
                FailedRequest.__table__.update()
                .where(FailedRequest.customer_id == customer_id)
                .values(id=big + offset)
            )
    async with session_of() as session:
        queues = await repository.queues_and_crm_ids(session, [a, b])
    assert [row.id for row in queues[a][0]] == [big]
    now = utc_now()
    async with session_of() as session, session.begin():
        await repository.settle(
            session,
            delivered=[repository.Settled(a, [big], "crm-a", 1)],
            failures=[repository.Failure([big + 1], "CRM answered 500", 1, False, now)],
            confirmed=True,
            learnt={},
            now=now,
        )
    async with session_of() as session:
        rows = (await session.execute(select(FailedRequest.id, FailedRequest.status))).all()
    assert [tuple(row) for row in rows] == [(big + 1, RequestStatus.FAILED)]


async def test_a_customer_settled_twice_in_one_group_ends_at_its_highest_version(
    session_of: Any,
) -> None:
    """Two outcomes of one customer in one settle (batches merged into one group): the
    higher version is what the CRM holds, whichever came first."""
    a, b = await customers_with_requests(session_of, 2)
    now = utc_now()
    async with session_of() as session, session.begin():
        await repository.settle(
            session,
            delivered=[
                repository.Settled(a, [], "crm-a", 3),
                repository.Settled(a, [], "crm-a", 2),
                repository.Settled(b, [], "crm-b1", 1),
                repository.Settled(b, [], "crm-b2", 2),
            ],
            failures=[],
            confirmed=True,
            learnt={},
            now=now,
        )
    async with session_of() as session:
        rows = (
            await session.execute(
                select(Customer.id, Customer.crm_id, Customer.crm_synced_version).order_by(
                    Customer.id
                )
            )
        ).all()
    assert [tuple(row) for row in rows] == [(a, "crm-a", 3), (b, "crm-b2", 2)]


async def test_settle_removes_delivered_rows_records_failures_and_only_raises_versions(
    session_of: Any,
) -> None:
    a, b, c = await customers_with_requests(session_of, 3, updates=1)
    async with session_of() as session:
        queues = await repository.queues_and_crm_ids(session, [a, b, c])
    now = utc_now()
    later = now + timedelta(seconds=60)
    async with session_of() as session, session.begin():
        await repository.settle(
            session,
            delivered=[
                repository.Settled(a, [queues[a][0][1].id], "crm-a", 2),
                repository.Settled(b, [queues[b][0][0].id], "crm-b", 1),
            ],
            failures=[
                repository.Failure([queues[c][0][0].id], "CRM answered 500", 3, False, later)
            ],
            confirmed=True,
            learnt={b: "crm-b"},
            now=now,
        )
    async with session_of() as session, session.begin():
        # An older version answered late never lowers what the CRM is known to hold.
        await repository.settle(
            session,
            [repository.Settled(a, [], "crm-a", 1)],
            [],
            confirmed=True,
            learnt={},
            now=now,
        )
        # Kafka mode notes the version published, only raised too.
        for version in (4, 3):
            await repository.settle(
                session,
                [repository.Settled(c, [], None, version)],
                [],
                confirmed=False,
                learnt={},
                now=now,
            )
    async with session_of() as session:
        customers = {
            row.id: row
            for row in (await session.scalars(select(Customer).where(Customer.id.in_([a, b, c]))))
        }
        left = {
            (row.customer_id, row.version): row
            for row in (await session.scalars(select(FailedRequest))).all()
        }
    assert (customers[a].crm_id, customers[a].crm_synced_version) == ("crm-a", 2)
    assert (customers[b].crm_id, customers[b].crm_synced_version) == ("crm-b", 1)
    assert customers[c].crm_published_version == 4
    assert customers[c].crm_synced_version is None
    assert set(left) == {(a, 1), (b, 2), (c, 1), (c, 2)}
    assert left[(b, 2)].crm_id == "crm-b"  # learnt from the create
    failed = left[(c, 1)]
    assert (failed.status, failed.attempts, failed.last_error) == (
        RequestStatus.FAILED,
        3,
        "CRM answered 500",
    )
    assert abs((failed.next_attempt_at - later).total_seconds()) < 1
    assert left[(c, 2)].status == RequestStatus.PENDING


async def _settled_alone(
    sql_engine: AsyncEngine, outcomes: repository.Outcomes, done: dict[str, set[int]]
) -> None:
    """`settle_and_release` as the engine runs a group of deliveries alone (on PostgreSQL
    with each statement committing on its own), checking that on PostgreSQL it sent one
    statement and no BEGIN or COMMIT."""
    statements: list[str] = []

    def seen(_conn: Any, _cursor: Any, statement: str, *_: Any) -> None:
        statements.append(statement)

    postgresql = sql_engine.dialect.name == "postgresql"
    async with sql_engine.connect() as connection:
        if postgresql:
            await connection.execution_options(isolation_level="AUTOCOMMIT")
        event.listen(sql_engine.sync_engine, "before_cursor_execute", seen)
        try:
            await repository.settle_and_release(connection, outcomes, done)
        finally:
            event.remove(sql_engine.sync_engine, "before_cursor_execute", seen)
        if not postgresql:
            await connection.commit()
    if postgresql:
        assert len(statements) == 1, statements
        assert not any(s.strip().upper() in ("BEGIN", "COMMIT") for s in statements)


async def test_deliveries_alone_settle_and_give_back_claims_in_one_statement_on_postgresql(
    session_of: Any, sql_engine: AsyncEngine
) -> None:
    """`settle_and_release` of a group of deliveries only: the same effects as `settle` and
    `release_done`; on PostgreSQL one statement committing on its own, no BEGIN/COMMIT."""
    a, b, c = await customers_with_requests(session_of, 3, updates=1)
    async with session_of() as session:
        queues = await repository.queues_and_crm_ids(session, [a, b, c])
    now = utc_now()
    async with session_of() as session, session.begin():
        assert await repository.claim(session, [a, b], "one", now, LEASE) == {a, b}
        assert await repository.claim(session, [c], "two", now, LEASE) == {c}
        await session.execute(
            Customer.__table__.update().where(Customer.id == b).values(crm_synced_version=5)
        )
    delivered = [
        repository.Settled(a, [row.id for row in queues[a][0]], "crm-a", 2),
        # Older than what the CRM is known to hold: never lowers it.
        repository.Settled(b, [queues[b][0][0].id], "crm-b", 1),
    ]
    outcomes = repository.Outcomes(now=now, confirmed=True, delivered=delivered)
    await _settled_alone(sql_engine, outcomes, {"one": {a, b}, "two": set()})
    async with session_of() as session:
        synced = dict(
            (await session.execute(select(Customer.id, Customer.crm_synced_version))).all()
        )
        crm_ids = dict((await session.execute(select(Customer.id, Customer.crm_id))).all())
        left = sorted(
            (row.customer_id, row.version)
            for row in (await session.scalars(select(FailedRequest))).all()
        )
        claims = dict((await session.execute(select(SyncClaim.customer_id, SyncClaim.owner))).all())
    assert synced == {a: 2, b: 5, c: None}
    assert crm_ids == {a: "crm-a", b: "crm-b", c: None}
    assert left == [(b, 2), (c, 1), (c, 2)]
    assert claims == {c: "two"}  # only the named owners' claims of the done customers


async def test_publishes_alone_settle_keep_and_give_back_claims_in_one_statement_on_postgresql(
    session_of: Any, sql_engine: AsyncEngine
) -> None:
    """Kafka mode's group of publishes only: each publish's newest row kept unconfirmed
    (a row kept already stays as it was), the rows removed, the published versions only
    raised, the synced ones untouched, the claims given back; on PostgreSQL one statement."""
    a, b, c = await customers_with_requests(session_of, 3, updates=1)
    async with session_of() as session:
        queues = await repository.queues_and_crm_ids(session, [a, b, c])
    earlier, now = utc_now() - timedelta(minutes=5), utc_now()
    a_rows, b_rows = [row.id for row in queues[a][0]], [row.id for row in queues[b][0]]
    async with session_of() as session, session.begin():
        assert await repository.claim(session, [a, b], "one", now, LEASE) == {a, b}
        assert await repository.claim(session, [c], "two", now, LEASE) == {c}
        await session.execute(
            Customer.__table__.update().where(Customer.id == b).values(crm_published_version=5)
        )
        # b's first row was published and kept before (a lapsed claim's first settle).
        await unconfirmed.keep(await session.connection(), [b_rows[0]], earlier)
    delivered = [
        repository.Settled(a, a_rows, None, 2),
        repository.Settled(b, [b_rows[0]], None, 1),
    ]
    outcomes = repository.Outcomes(now=now, confirmed=False, delivered=delivered)
    await _settled_alone(sql_engine, outcomes, {"one": {a, b}, "two": set()})
    async with session_of() as session:
        versions = {
            row.id: (row.crm_published_version, row.crm_synced_version)
            for row in (await session.execute(select(Customer))).scalars()
        }
        left = sorted(
            (row.customer_id, row.version)
            for row in (await session.scalars(select(FailedRequest))).all()
        )
        kept = {
            row.id: (row.customer_id, row.version, row.published_at, row.publications)
            for row in (await session.scalars(select(UnconfirmedEvent))).all()
        }
        claims = dict((await session.execute(select(SyncClaim.customer_id, SyncClaim.owner))).all())
    assert versions == {a: (2, None), b: (5, None), c: (None, None)}
    assert left == [(b, 2), (c, 1), (c, 2)]
    assert kept.keys() == {a_rows[-1], b_rows[0]}
    assert kept[a_rows[-1]][:2] == (a, 2) and kept[b_rows[0]][:2] == (b, 1)
    assert abs((kept[a_rows[-1]][2] - now).total_seconds()) < 1
    assert abs((kept[b_rows[0]][2] - earlier).total_seconds()) < 1  # kept as it was
    assert claims == {c: "two"}


def _settings(database_url: str, **overrides: Any) -> Settings:
    return Settings(database_url=database_url, **overrides)


async def test_a_batch_is_one_transaction_to_claim_and_one_to_settle_whatever_its_size(
    sql_engine: AsyncEngine, database_url: str
) -> None:
    sessionmaker = create_sessionmaker(sql_engine)
    ids = await customers_with_requests(sessionmaker, 40)

    async def delivered(change: Change) -> Outcome:
        return Delivered(f"crm-{change.customer_id}")

    connector = FakeConnector(delivered, batch_size=100)
    engine = DeliveryEngine(sessionmaker, connector, _settings(database_url))
    transactions = 0

    def count(_connection: Any) -> None:
        nonlocal transactions
        transactions += 1

    event.listen(sql_engine.sync_engine, "begin", count)
    try:
        result = await engine.deliver(dict.fromkeys(ids, Urgency.DUE))
    finally:
        event.remove(sql_engine.sync_engine, "begin", count)
    assert transactions == 2
    assert connector.batches == [sorted(ids)]  # one call
    assert (result.counts.attempted, result.counts.delivered) == (40, 40)
    assert await outbox_left(sessionmaker) == 0
    assert await _scalar(sessionmaker, select(func.count()).select_from(SyncClaim)) == 0
    synced = await _scalar(
        sessionmaker, select(func.count()).where(Customer.crm_synced_version == 1)
    )
    assert synced == 40


async def test_a_batch_with_one_permanently_refused_record_settles_the_others_delivered(
    sql_engine: AsyncEngine, database_url: str
) -> None:
    sessionmaker = create_sessionmaker(sql_engine)
    ids = await customers_with_requests(sessionmaker, 5, updates=1)
    refused, flaky = ids[1], ids[3]

    async def answer(change: Change) -> Outcome:
        if change.customer_id == refused:
            return Failed("CRM answered 422: email is invalid", 422)
        if change.customer_id == flaky:
            return Failed("CRM answered 500", 500)
        return Delivered(f"crm-{change.customer_id}")

    connector = FakeConnector(answer, batch_size=100)
    engine = DeliveryEngine(sessionmaker, connector, _settings(database_url))
    result = await engine.deliver(dict.fromkeys(ids, Urgency.DUE))
    assert len(connector.batches) == 1
    assert (result.counts.delivered, result.counts.dead, result.counts.failed) == (3, 1, 1)
    # Each delivered customer has its update behind: it is due in the next batch.
    assert sorted(result.more) == sorted(set(ids) - {refused, flaky})
    async with sessionmaker() as session:
        rows = (await session.scalars(select(FailedRequest).order_by(FailedRequest.id))).all()
    by_customer: dict[int, list[FailedRequest]] = {}
    for row in rows:
        by_customer.setdefault(row.customer_id, []).append(row)
    assert [r.status for r in by_customer[refused]] == [RequestStatus.DEAD, RequestStatus.PENDING]
    assert [r.status for r in by_customer[flaky]] == [RequestStatus.FAILED, RequestStatus.PENDING]
    for customer_id in set(ids) - {refused, flaky}:
        assert [(r.operation, r.status) for r in by_customer[customer_id]] == [
            (Operation.UPDATE, RequestStatus.PENDING)
        ]
    # Their claims are kept for the batch that continues them; the refused one waits for
    # an operator, the failed one for its backoff, their claims given back.
    async with sessionmaker() as session:
        held = set((await session.scalars(select(SyncClaim.customer_id))).all())
    assert held == set(result.more)
    again = await engine.deliver(dict.fromkeys(result.more, Urgency.DUE), owner=result.owner)
    assert again.counts.delivered == 3
    assert sorted(connector.batches[-1]) == sorted(result.more)
    assert await _scalar(sessionmaker, select(func.count()).select_from(SyncClaim)) == 0


async def test_customers_claimed_elsewhere_are_busy_and_left_alone(
    sql_engine: AsyncEngine, database_url: str
) -> None:
    sessionmaker = create_sessionmaker(sql_engine)
    a, b = await customers_with_requests(sessionmaker, 2)
    async with sessionmaker() as session, session.begin():
        assert await repository.claim(session, [a], "other-replica", utc_now(), LEASE) == {a}

    async def delivered(change: Change) -> Outcome:
        return Delivered(f"crm-{change.customer_id}")

    connector = FakeConnector(delivered, batch_size=10)
    engine = DeliveryEngine(sessionmaker, connector, _settings(database_url))
    result = await engine.deliver({a: Urgency.DUE, b: Urgency.DUE})
    assert result.busy == [a]
    assert connector.batches == [[b]]
    async with sessionmaker() as session:
        owners = dict((await session.execute(select(SyncClaim.customer_id, SyncClaim.owner))).all())
    assert owners == {a: "other-replica"}
