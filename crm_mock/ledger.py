"""The CRM mock's tables for its Kafka consumer, and the fault switch it shares.

- `crm_fault_switch`: the switch of `PUT /api/crm/_faults`, written by the HTTP server
  (reset to healthy when it starts) and read by `crm-mock consume` in every transaction
  that applies events (once for a run of them), so a change governs the consumer at once
  although it runs in another process. Both
  must use the same `CRM_DATABASE_URL`, as they must anyway to share the CRM's records.
- `crm_event_versions`: per external id, the rank of the newest event applied (its
  version, a DELETE after the write of its version; kept after a DELETE), so an event
  applied twice, or older than what the CRM holds, changes nothing.
- `crm_dead_letters`: the events the consumer dead-lettered. While one of a customer's is
  open (not replayed), that customer's later events follow it there instead of being
  applied over it; `crm-mock dlq replay` applies them and closes them.
"""

from collections.abc import Collection, Sequence
from datetime import datetime
from functools import lru_cache
from typing import Any, cast

from sqlalchemy import Connection, Integer, String, Table, Text, bindparam, insert, select, update
from sqlalchemy.exc import IntegrityError
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker
from sqlalchemy.orm import Mapped, mapped_column

from crm_mock.faults import FaultSettings
from crm_mock.store import Base, UtcDateTime, utc_now

SWITCH_ID = 1


class FaultSwitchRow(Base):
    __tablename__ = "crm_fault_switch"

    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=False)
    settings: Mapped[str] = mapped_column(Text)
    updated_at: Mapped[datetime] = mapped_column(UtcDateTime)


class EventVersion(Base):
    __tablename__ = "crm_event_versions"

    external_id: Mapped[str] = mapped_column(String(255), primary_key=True)
    # version * 2, + 1 for a DELETE (see `events.CustomerEvent.rank`)
    version: Mapped[int] = mapped_column(Integer)
    event_id: Mapped[str] = mapped_column(String(255))


class DeadLetter(Base):
    __tablename__ = "crm_dead_letters"

    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    event_id: Mapped[str] = mapped_column(String(255), unique=True)
    external_id: Mapped[str | None] = mapped_column(String(255), index=True)
    version: Mapped[int | None] = mapped_column(Integer)
    # The event exactly as received (it may not even be JSON).
    event: Mapped[str] = mapped_column(Text)
    error: Mapped[str] = mapped_column(Text)
    attempts: Mapped[int] = mapped_column(Integer)
    dead_at: Mapped[datetime] = mapped_column(UtcDateTime)
    replayed_at: Mapped[datetime | None] = mapped_column(UtcDateTime, nullable=True)


# --- the fault switch ------------------------------------------------------------------


async def share_faults(
    sessionmaker: async_sessionmaker[AsyncSession], faults: FaultSettings
) -> None:
    """Make `faults` the switch every process of this CRM sees."""
    text = faults.model_dump_json(by_alias=True)
    async with sessionmaker() as session, session.begin():
        row = await session.get(FaultSwitchRow, SWITCH_ID)
        if row is None:
            session.add(FaultSwitchRow(id=SWITCH_ID, settings=text, updated_at=utc_now()))
        else:
            row.settings = text
            row.updated_at = utc_now()


# Statements built once: building one (and its cache key) cost the consumer more CPU than
# running it.
_READ_SWITCH = select(FaultSwitchRow.settings).where(FaultSwitchRow.id == SWITCH_ID)


async def shared_faults(session: AsyncSession) -> FaultSettings:
    """The switch as the HTTP server last set it (healthy when it never did)."""
    return _switch_of((await session.execute(_READ_SWITCH)).scalar_one_or_none())


def faults_in(connection: Connection) -> FaultSettings:
    """`shared_faults` on a sync connection."""
    return _switch_of(connection.execute(_READ_SWITCH).scalar_one_or_none())


@lru_cache(maxsize=16)
def _switch_of(text: str | None) -> FaultSettings:
    # Parsed once per text: the switch is read in every transaction, and seldom changes.
    return FaultSettings() if text is None else FaultSettings.model_validate_json(text)


# --- versions ----------------------------------------------------------------------------


async def applied_version(session: AsyncSession, external_id: str) -> int | None:
    row = await session.get(EventVersion, external_id)
    return None if row is None else row.version


async def note_version(
    session: AsyncSession, external_id: str, version: int, event_id: str
) -> None:
    row = await session.get(EventVersion, external_id)
    if row is None:
        session.add(EventVersion(external_id=external_id, version=version, event_id=event_id))
    else:
        row.version = version
        row.event_id = event_id
    await session.flush()


_VERSIONS = cast(Table, EventVersion.__table__)
_VERSION_ROWS_OF = select(_VERSIONS.c.external_id, _VERSIONS.c.version).where(
    _VERSIONS.c.external_id.in_(bindparam("ids", expanding=True))
)
_INSERT_VERSIONS = insert(_VERSIONS)
_UPDATE_VERSIONS = update(_VERSIONS).where(_VERSIONS.c.external_id == bindparam("b_external_id"))


def versions_of(connection: Connection, external_ids: Sequence[str]) -> dict[str, int]:
    """The applied versions of these external ids (one query, a sync connection)."""
    found = connection.execute(_VERSION_ROWS_OF, {"ids": list(external_ids)})
    return dict(found.tuples().all())


def write_versions(
    connection: Connection, versions: dict[str, tuple[int, str]], stored: Collection[str]
) -> None:
    """Record (version, event id) per external id: an update for those in `stored`, an
    insert for the others (one statement each)."""
    new = [
        {"external_id": external_id, "version": version, "event_id": event_id}
        for external_id, (version, event_id) in versions.items()
        if external_id not in stored
    ]
    if new:
        connection.execute(_INSERT_VERSIONS, new)
    changed = [
        {"b_external_id": external_id, "version": version, "event_id": event_id}
        for external_id, (version, event_id) in versions.items()
        if external_id in stored
    ]
    if changed:
        connection.execute(_UPDATE_VERSIONS, changed)


# --- dead letters --------------------------------------------------------------------------


async def open_letter_of(session: AsyncSession, external_id: str) -> DeadLetter | None:
    """The oldest open dead letter of this customer: its later events must wait behind it."""
    query = (
        select(DeadLetter)
        .where(DeadLetter.external_id == external_id, DeadLetter.replayed_at.is_(None))
        .order_by(DeadLetter.id)
        .limit(1)
    )
    return (await session.execute(query)).scalar_one_or_none()


_WITH_OPEN_LETTERS = (
    select(DeadLetter.external_id)
    .where(
        DeadLetter.external_id.in_(bindparam("ids", expanding=True)),
        DeadLetter.replayed_at.is_(None),
    )
    .distinct()
)


def open_letters_in(connection: Connection, external_ids: Sequence[str]) -> set[str]:
    """Which of these customers have an open dead letter (one query, a sync connection)."""
    found = connection.execute(_WITH_OPEN_LETTERS, {"ids": list(external_ids)})
    return {external_id for external_id in found.scalars() if external_id}


async def add_letter(session: AsyncSession, letter: DeadLetter) -> bool:
    """Keep a dead letter; False when this event was dead-lettered already (a redelivery)."""
    session.add(letter)
    try:
        await session.flush()
    except IntegrityError:
        await session.rollback()
        return False
    return True


async def open_letters(session: AsyncSession, letter_id: int | None = None) -> Sequence[DeadLetter]:
    """The open dead letters, oldest first (only `letter_id`'s when given)."""
    query = select(DeadLetter).where(DeadLetter.replayed_at.is_(None)).order_by(DeadLetter.id)
    if letter_id is not None:
        query = query.where(DeadLetter.id == letter_id)
    return (await session.execute(query)).scalars().all()


async def get_letter(session: AsyncSession, letter_id: int) -> DeadLetter | None:
    return await session.get(DeadLetter, letter_id)


def letter_view(letter: DeadLetter) -> dict[str, Any]:
    """A dead letter as `crm-mock dlq list` prints it."""
    return {
        "id": letter.id,
        "eventId": letter.event_id,
        "externalId": letter.external_id,
        "version": letter.version,
        "error": letter.error,
        "attempts": letter.attempts,
        "deadAt": letter.dead_at.isoformat(),
    }
