"""The outbox tables: `failed_requests` and the per-customer delivery claims.

State machine of a row of `failed_requests` (one CRM request not yet delivered):

    (committed with the customer write)
              |
              v
          pending --delivered--> (row deleted)
              |
      transient failure (5xx, 408, 409*, 425, 429, timeout, refused)
              v
          failed  --delivered--> (row deleted)
              |  \\__ transient failure: attempts += 1, next_attempt_at = now + backoff
              |
      permanent failure (other 4xx) or attempts == RETRY_MAX_ATTEMPTS
              v
            dead  --replay--> pending (attempts reset)
              \\--discard--> (row deleted)

(*) a 409 on CREATE is not a failure: the existing CRM record is adopted.

In Kafka mode "delivered" is the broker's acknowledgement: the rows are deleted all the
same, and the version the publish carried is kept in `unconfirmed_events` until the CRM
reports it applied or dead (`sync.unconfirmed`, `sync.republisher`).

A customer's rows are delivered one at a time, oldest first. A row that is not yet
due, or dead, holds back the newer rows of the same customer, so the CRM never sees an
older state after a newer one.
"""

from dataclasses import dataclass, fields
from datetime import datetime
from enum import StrEnum
from typing import Any

from sqlalchemy import JSON, BigInteger, Float, Index, Integer, String, Text
from sqlalchemy.orm import Mapped, mapped_column

from customer_service.columns import BigIntId, UTCDateTime, utc_now
from customer_service.db import Base


class Operation(StrEnum):
    CREATE = "CREATE"
    UPDATE = "UPDATE"
    DELETE = "DELETE"


class RequestStatus(StrEnum):
    PENDING = "pending"
    FAILED = "failed"
    DEAD = "dead"


class FailedRequest(Base):
    """One change owed to the CRM: the outbox row written in the customer's transaction."""

    __tablename__ = "failed_requests"
    __table_args__ = (
        Index("ix_failed_requests_customer_id_id", "customer_id", "id"),
        Index("ix_failed_requests_status_next_attempt_at", "status", "next_attempt_at"),
        # Ids order a customer's requests: never hand out a smaller one again.
        {"sqlite_autoincrement": True},
    )

    id: Mapped[int] = mapped_column(BigIntId, primary_key=True, autoincrement=True)
    # No foreign key: a DELETE outlives its customer row.
    customer_id: Mapped[int] = mapped_column(Integer)
    operation: Mapped[str] = mapped_column(String(10))
    status: Mapped[str] = mapped_column(String(10), default=RequestStatus.PENDING)
    attempts: Mapped[int] = mapped_column(Integer, default=0)
    last_error: Mapped[str | None] = mapped_column(Text)
    next_attempt_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utc_now)
    # The customer's version this request carries, and its CRM body (null for DELETE).
    version: Mapped[int] = mapped_column(Integer)
    payload: Mapped[dict[str, Any] | None] = mapped_column(JSON)
    # The CRM id known when the request was written (DELETE needs it after the row is gone).
    crm_id: Mapped[str | None] = mapped_column(String(100))
    idempotency_key: Mapped[str] = mapped_column(String(64), unique=True)
    created_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utc_now)
    updated_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utc_now)


@dataclass(frozen=True, slots=True)
class QueuedRequest:
    """A `failed_requests` row as the delivery engine reads it: plain values, no ORM (the
    engine only reads its rows; every change to them is a Core statement)."""

    id: int
    customer_id: int
    operation: str
    status: str
    attempts: int
    last_error: str | None
    next_attempt_at: datetime
    version: int
    payload: dict[str, Any] | None
    crm_id: str | None
    idempotency_key: str
    created_at: datetime
    updated_at: datetime


QUEUED_COLUMNS = tuple(f.name for f in fields(QueuedRequest))
# A request as the engine and the connectors read it: an ORM row, or a plain one.
OutboxRow = FailedRequest | QueuedRequest


class SyncClaim(Base):
    """Which replica delivers one customer's requests now, until when (guarantee 6)."""

    __tablename__ = "sync_claims"

    customer_id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=False)
    owner: Mapped[str] = mapped_column(String(64))
    expires_at: Mapped[datetime] = mapped_column(UTCDateTime)


class CrmCallWindow(Base):
    """CRM calls made by all replicas in one wall-clock second (`crm.shared_ceiling`)."""

    __tablename__ = "crm_call_windows"

    second: Mapped[int] = mapped_column(BigInteger, primary_key=True, autoincrement=False)
    calls: Mapped[int] = mapped_column(Integer)


class CrmPause(Base):
    """Until when the CRM asked every caller to wait (a 429's pause), for all replicas
    (`crm.shared_ceiling.SharedPause`): wall-clock seconds since the epoch."""

    __tablename__ = "crm_pauses"

    name: Mapped[str] = mapped_column(String(32), primary_key=True)
    until_epoch: Mapped[float] = mapped_column(Float)


class UnconfirmedEvent(Base):
    """Kafka mode: a version the broker took that the CRM has not reported applied or
    dead yet (`sync.unconfirmed`). Still the service's responsibility: one not confirmed
    within KAFKA_CONFIRM_SECONDS of its last publish is published again, same eventId
    (`sync.republisher`). Written in the transaction that removes its outbox rows, removed
    by the status reader's transaction that records its confirmation."""

    __tablename__ = "unconfirmed_events"
    __table_args__ = (
        Index("ix_unconfirmed_events_customer_id_version", "customer_id", "version"),
        Index("ix_unconfirmed_events_published_at", "published_at"),
    )

    # The id of the outbox row it was published from: orders a customer's events.
    id: Mapped[int] = mapped_column(BigIntId, primary_key=True, autoincrement=False)
    customer_id: Mapped[int] = mapped_column(Integer)
    operation: Mapped[str] = mapped_column(String(10))
    version: Mapped[int] = mapped_column(Integer)
    payload: Mapped[dict[str, Any] | None] = mapped_column(JSON)
    # The event's eventId (the outbox row's Idempotency-Key) and occurredAt.
    event_id: Mapped[str] = mapped_column(String(64))
    occurred_at: Mapped[datetime] = mapped_column(UTCDateTime)
    # When the broker last took it, and how many times it has.
    published_at: Mapped[datetime] = mapped_column(UTCDateTime)
    publications: Mapped[int] = mapped_column(Integer)
