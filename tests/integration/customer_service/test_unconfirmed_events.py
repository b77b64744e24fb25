"""Kafka mode's end-to-end confirmation, on both databases: what a publish carried is kept
until the CRM reports it applied or dead (`sync.unconfirmed`), and the re-publisher
(`sync.republisher`) publishes again only the versions overdue and not confirmed, each
customer's oldest first, never a customer another delivery holds, and never one version
twice from two replicas at once."""

import asyncio
from collections.abc import Sequence
from datetime import datetime, timedelta
from typing import Any

import pytest
from outbox_support import customers_with_requests
from sqlalchemy import delete, func, select, update
from sqlalchemy.ext.asyncio import AsyncEngine, AsyncSession, async_sessionmaker
from support import FakeConnector, reset_postgres

from customer_service.columns import utc_now
from customer_service.config import Settings
from customer_service.customers.models import Customer
from customer_service.db import create_engine, create_sessionmaker
from customer_service.reconciliation import repository as reconciliation
from customer_service.sync import repository, unconfirmed
from customer_service.sync.connector import Change
from customer_service.sync.engine import DeliveryEngine
from customer_service.sync.models import (
    FailedRequest,
    Operation,
    SyncClaim,
    UnconfirmedEvent,
)
from customer_service.sync.outcome import Delivered, Failed, Outcome
from customer_service.sync.republisher import Republisher, rounds_of
from customer_service.sync.retry import Urgency
from customer_service.sync.status_consumer import APPLIED, DEAD, CrmStatus, record_statuses

CONFIRM = 5.0


def _settings(database_url: str, **overrides: Any) -> Settings:
    return Settings(database_url=database_url, kafka_confirm_seconds=CONFIRM, **overrides)


class Publisher:
    """The broker for the re-publisher: records each call's (customer, version, eventId),
    and refuses the customers in `refuse`."""

    def __init__(self, delay: float = 0.0) -> None:
        self.calls: list[list[tuple[int, int, str]]] = []
        self.refuse: set[int] = set()
        self._delay = delay

    async def __call__(self, changes: Sequence[Change]) -> list[Outcome]:
        self.calls.append(
            [(c.customer_id, c.request.version, c.request.idempotency_key) for c in changes]
        )
        if self._delay:
            await asyncio.sleep(self._delay)  # a broker's acknowledgement takes a while
        return [
            Failed("Kafka publish failed: KafkaTimeoutError")
            if c.customer_id in self.refuse
            else Delivered(None)
            for c in changes
        ]

    @property
    def published(self) -> list[tuple[int, int, str]]:
        return [one for call in self.calls for one in call]


async def _unconfirmed(
    sessionmaker: async_sessionmaker[AsyncSession],
) -> dict[int, list[UnconfirmedEvent]]:
    async with sessionmaker() as session:
        rows = await session.scalars(select(UnconfirmedEvent).order_by(UnconfirmedEvent.id))
        found: dict[int, list[UnconfirmedEvent]] = {}
        for row in rows:
            found.setdefault(row.customer_id, []).append(row)
        return found


async def _put_unconfirmed(
    sessionmaker: async_sessionmaker[AsyncSession],
    rows: list[tuple[int, int, datetime]],
) -> dict[tuple[int, int], str]:
    """Versions (customer, version, published at) as a publish would have kept them; their
    eventIds."""
    keys = {}
    async with sessionmaker() as session, session.begin():
        next_id = 1 + int(
            await session.scalar(select(func.coalesce(func.max(UnconfirmedEvent.id), 0))) or 0
        )
        for n, (customer_id, version, published_at) in enumerate(rows):
            key = f"event-{customer_id}-{version}"
            keys[(customer_id, version)] = key
            session.add(
                UnconfirmedEvent(
                    id=next_id + n,
                    customer_id=customer_id,
                    operation=Operation.CREATE if version == 1 else Operation.UPDATE,
                    version=version,
                    payload={"firstName": "U", "lastName": "Unconfirmed"},
                    event_id=key,
                    occurred_at=published_at,
                    published_at=published_at,
                    publications=1,
                )
            )
    return keys


async def test_a_kafka_batch_keeps_what_each_publish_carried_until_the_crm_reports_it(
    sql_engine: AsyncEngine, database_url: str
) -> None:
    sessionmaker = create_sessionmaker(sql_engine)
    a, b, c = await customers_with_requests(sessionmaker, 3, updates=2, name="U")
    sent: dict[tuple[int, int], str] = {}

    async def published(change: Change) -> Outcome:
        sent[(change.customer_id, change.request.version)] = change.request.idempotency_key
        return Delivered(None)

    connector = FakeConnector(published, batch_size=100)
    connector.confirms_later = True  # the Kafka connector's "delivered": handed over
    engine = DeliveryEngine(sessionmaker, connector, _settings(database_url))
    await engine.drain(dict.fromkeys([a, b, c], Urgency.DUE), None, lambda: False)

    # The create went alone, the two updates coalesced into version 3: two events each,
    # both kept (the coalesced version 2 was never an event of its own).
    kept = await _unconfirmed(sessionmaker)
    assert {cid: [(r.version, r.event_id) for r in rows] for cid, rows in kept.items()} == {
        cid: [(1, sent[(cid, 1)]), (3, sent[(cid, 3)])] for cid in (a, b, c)
    }
    assert [r.operation for r in kept[a]] == [Operation.CREATE, Operation.UPDATE]
    assert kept[a][1].payload is not None and kept[a][1].payload["firstName"] == "U0"
    async with sessionmaker() as session:
        assert await session.scalar(select(func.count()).select_from(FailedRequest)) == 0

    # A report confirms its version and the customer's older ones, nothing else.
    async with sessionmaker() as session, session.begin():
        await record_statuses(
            session,
            statuses=[
                CrmStatus(a, 1, APPLIED, "crm-a"),
                CrmStatus(b, 3, APPLIED, "crm-b"),  # 1 was lost, or is superseded
                CrmStatus(c, 3, DEAD, None),
            ],
        )
    left = await _unconfirmed(sessionmaker)
    assert {cid: [r.version for r in rows] for cid, rows in left.items()} == {a: [3]}


async def test_a_row_kept_twice_is_kept_once_and_fails_no_settle(sql_engine: AsyncEngine) -> None:
    """Two settles of one published row (a batch whose claim lapsed, and the batch that
    took the customer over): the second keeps nothing more and raises nothing."""
    sessionmaker = create_sessionmaker(sql_engine)
    (a,) = await customers_with_requests(sessionmaker, 1)
    async with sessionmaker() as session:
        row_id = await session.scalar(select(FailedRequest.id))
    assert row_id is not None
    for _ in range(2):
        async with sessionmaker() as session, session.begin():
            connection = await session.connection()
            await unconfirmed.keep(connection, [row_id], utc_now())
    kept = await _unconfirmed(sessionmaker)
    assert [(r.id, r.version, r.publications) for r in kept[a]] == [(row_id, 1, 1)]


async def test_an_http_batch_keeps_nothing(sql_engine: AsyncEngine, database_url: str) -> None:
    sessionmaker = create_sessionmaker(sql_engine)
    ids = await customers_with_requests(sessionmaker, 2, updates=1)

    async def delivered(change: Change) -> Outcome:
        return Delivered(f"crm-{change.customer_id}")

    engine = DeliveryEngine(
        sessionmaker, FakeConnector(delivered, batch_size=10), _settings(database_url)
    )
    await engine.drain(dict.fromkeys(ids, Urgency.DUE), None, lambda: False)
    assert await _unconfirmed(sessionmaker) == {}


async def test_only_overdue_unconfirmed_versions_are_selected_each_customers_oldest_first(
    sql_engine: AsyncEngine,
) -> None:
    sessionmaker = create_sessionmaker(sql_engine)
    ids = await customers_with_requests(sessionmaker, 4)
    c1, c2, c3, c4 = ids
    gone = max(ids) + 100  # a deleted customer: its DELETE is still owed
    now = utc_now()
    old, older, recent = now - timedelta(seconds=30), now - timedelta(seconds=60), now
    keys = await _put_unconfirmed(
        sessionmaker,
        [
            (c1, 1, older),
            (c1, 2, old),
            (c1, 3, recent),  # published again lately: not overdue yet
            (c2, 1, old),  # the customer row says the CRM applied it: confirmed
            (c3, 2, old),  # the customer row says the CRM dead-lettered it: confirmed
            (c4, 1, recent),
            (gone, 5, old),
        ],
    )
    async with sessionmaker() as session, session.begin():
        await session.execute(
            update(Customer).where(Customer.id == c2).values(crm_synced_version=1)
        )
        await session.execute(update(Customer).where(Customer.id == c3).values(crm_dead_version=2))
    before = now - timedelta(seconds=CONFIRM)
    async with sessionmaker() as session, session.begin():
        # The longest waiting first; c4 is not due.
        customers = await unconfirmed.overdue_customers(session, before, limit=10)
        assert customers[0] == c1 and set(customers) == {c1, c2, c3, gone}
        assert await unconfirmed.overdue_customers(session, before, limit=1) == [c1]
        rows = await unconfirmed.overdue_of(session, customers, before)
    assert [(r.customer_id, r.version, r.idempotency_key) for r in rows] == [
        (c1, 1, keys[(c1, 1)]),
        (c1, 2, keys[(c1, 2)]),
        (gone, 5, keys[(gone, 5)]),
    ]
    # The confirmed ones are gone for good; the rest stay until the CRM reports them.
    left = await _unconfirmed(sessionmaker)
    assert {cid: [r.version for r in rows] for cid, rows in left.items()} == {
        c1: [1, 2, 3],
        c4: [1],
        gone: [5],
    }
    assert rounds_of(rows) == [[rows[0], rows[2]], [rows[1]]]


async def test_a_pass_publishes_overdue_versions_oldest_first_and_starts_their_wait_over(
    sql_engine: AsyncEngine, database_url: str
) -> None:
    sessionmaker = create_sessionmaker(sql_engine)
    a, b, c = await customers_with_requests(sessionmaker, 3)
    now = utc_now()
    overdue = now - timedelta(seconds=CONFIRM + 1)
    keys = await _put_unconfirmed(
        sessionmaker,
        [(a, 1, overdue), (a, 2, overdue), (a, 3, overdue), (b, 1, overdue), (c, 1, now)],
    )
    publisher = Publisher()
    republisher = Republisher(_settings(database_url), sessionmaker, publisher)

    done = await republisher.run_pass()
    assert (done.customers, done.published, done.failed) == (2, 4, 0)
    # Round by round, each acknowledged before the next: a customer's oldest first.
    assert publisher.calls == [
        [(a, 1, keys[(a, 1)]), (b, 1, keys[(b, 1)])],
        [(a, 2, keys[(a, 2)])],
        [(a, 3, keys[(a, 3)])],
    ]
    kept = await _unconfirmed(sessionmaker)
    for row in kept[a] + kept[b]:
        assert row.publications == 2
        assert row.published_at >= now
    assert kept[c][0].publications == 1
    async with sessionmaker() as session:
        assert await session.scalar(select(func.count()).select_from(SyncClaim)) == 0

    # Published again just now: nothing is overdue until KAFKA_CONFIRM_SECONDS later.
    assert (await republisher.run_pass()).published == 0
    later = utc_now() + timedelta(seconds=CONFIRM + 1)
    again = await republisher.run_pass(now=later)
    assert (again.customers, again.published) == (3, 5)


async def test_a_failed_publish_holds_back_that_customers_later_versions_only(
    sql_engine: AsyncEngine, database_url: str
) -> None:
    sessionmaker = create_sessionmaker(sql_engine)
    a, b = await customers_with_requests(sessionmaker, 2)
    overdue = utc_now() - timedelta(seconds=CONFIRM + 1)
    await _put_unconfirmed(sessionmaker, [(a, 1, overdue), (a, 2, overdue), (b, 1, overdue)])
    publisher = Publisher()
    publisher.refuse = {a}
    republisher = Republisher(_settings(database_url), sessionmaker, publisher)
    done = await republisher.run_pass()
    assert (done.published, done.failed) == (1, 1)
    assert [(cid, v) for cid, v, _ in publisher.published] == [(a, 1), (b, 1)]  # not (a, 2)
    kept = await _unconfirmed(sessionmaker)
    assert [r.publications for r in kept[a]] == [1, 1]  # still overdue: the next pass
    assert [r.publications for r in kept[b]] == [2]

    publisher.refuse = set()
    again = await republisher.run_pass()
    assert [(cid, v) for cid, v, _ in publisher.calls[-2] + publisher.calls[-1]] == [
        (a, 1),
        (a, 2),
    ]
    assert again.published == 2


async def test_a_customer_another_delivery_holds_waits_and_a_dead_replicas_claim_expires(
    sql_engine: AsyncEngine, database_url: str
) -> None:
    sessionmaker = create_sessionmaker(sql_engine)
    held, crashed, free = await customers_with_requests(sessionmaker, 3)
    now = utc_now()
    overdue = now - timedelta(seconds=CONFIRM + 1)
    await _put_unconfirmed(
        sessionmaker, [(held, 1, overdue), (crashed, 1, overdue), (free, 1, overdue)]
    )
    settings = _settings(database_url)
    lease = settings.claim_lease_seconds
    async with sessionmaker() as session, session.begin():
        # A live delivery of `held`'s newer outbox rows, and a replica killed (kill -9)
        # while it published `crashed`'s version: its claim lapsed.
        assert await repository.claim(session, [held], "engine:batch", now, lease) == {held}
        long_ago = now - timedelta(seconds=lease + 1)
        assert await repository.claim(session, [crashed], "dead:pass", long_ago, lease) == {crashed}
    publisher = Publisher()
    republisher = Republisher(settings, sessionmaker, publisher)
    await republisher.run_pass()
    assert sorted(cid for cid, _, _ in publisher.published) == sorted([crashed, free])
    async with sessionmaker() as session:
        owners = dict((await session.execute(select(SyncClaim.customer_id, SyncClaim.owner))).all())
    assert owners == {held: "engine:batch"}  # ours given back, the other's left alone

    async with sessionmaker() as session, session.begin():
        await repository.release(session, "engine:batch")
    await republisher.run_pass()
    assert [cid for cid, _, _ in publisher.calls[-1]] == [held]


@pytest.mark.parametrize("attempt", range(3))
async def test_two_replicas_never_publish_one_version_again_twice(
    postgres_database: str, attempt: int
) -> None:
    """Replicas share PostgreSQL (SQLite is one process's database)."""
    del attempt  # run a few times: the passes race differently each time
    database_url = postgres_database
    await reset_postgres(database_url)
    engines = [create_engine(database_url) for _ in range(2)]
    try:
        makers = [create_sessionmaker(engine) for engine in engines]
        ids = await customers_with_requests(makers[0], 60)
        overdue = utc_now() - timedelta(seconds=CONFIRM + 1)
        keys = await _put_unconfirmed(makers[0], [(cid, v, overdue) for cid in ids for v in (1, 2)])
        publishers = [Publisher(delay=0.02), Publisher(delay=0.02)]
        replicas = [
            Republisher(_settings(database_url), maker, publisher)
            for maker, publisher in zip(makers, publishers, strict=True)
        ]

        # Each replica keeps passing until it finds nothing overdue left.
        async def passes(replica: Republisher) -> None:
            for _ in range(10):
                await replica.run_pass()

        await asyncio.gather(*(passes(r) for r in replicas))
        published = publishers[0].published + publishers[1].published
        assert sorted(key for _, _, key in published) == sorted(keys.values())
        for publisher in publishers:  # whoever took a customer sent its versions in order
            order: dict[int, list[int]] = {}
            for cid, version, _ in publisher.published:
                order.setdefault(cid, []).append(version)
            assert all(versions == [1, 2] for versions in order.values()), order
    finally:
        for engine in engines:
            await engine.dispose()


async def test_reconciliation_in_kafka_mode_counts_a_version_awaiting_the_crm_as_on_its_way(
    sql_engine: AsyncEngine,
) -> None:
    sessionmaker = create_sessionmaker(sql_engine)
    awaiting, settled = await customers_with_requests(sessionmaker, 2)
    gone = settled + 100  # deleted here; its DELETE not confirmed yet
    async with sessionmaker() as session, session.begin():
        await session.execute(delete(FailedRequest))  # both published
    await _put_unconfirmed(sessionmaker, [(awaiting, 1, utc_now()), (gone, 2, utc_now())])
    async with sessionmaker() as session:
        kafka = await reconciliation.local_state(session, [awaiting, settled, gone], awaiting=True)
        http = await reconciliation.local_state(session, [awaiting, settled, gone])
        assert {cid: local.busy for cid, local in kafka.items()} == {
            awaiting: True,
            settled: False,
            gone: True,
        }
        assert {cid: local.busy for cid, local in http.items()} == {
            awaiting: False,
            settled: False,
        }
        assert await reconciliation.customers_after(session, 0, 10, awaiting=True) == [
            (awaiting, True),
            (settled, False),
        ]
        assert await reconciliation.customers_after(session, 0, 10) == [
            (awaiting, False),
            (settled, False),
        ]
        assert await reconciliation.has_requests(session, gone, awaiting=True)
        assert not await reconciliation.has_requests(session, gone)
