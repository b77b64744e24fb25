"""The `customers` table."""

from datetime import datetime

from sqlalchemy import Integer, String
from sqlalchemy.orm import Mapped, mapped_column

from customer_service.columns import UTCDateTime, utc_now
from customer_service.db import Base


class Customer(Base):
    """A customer as this service stores it, plus what it knows of the CRM's copy."""

    __tablename__ = "customers"
    # Never reuse the id of a deleted customer: it is the CRM's externalId.
    __table_args__ = {"sqlite_autoincrement": True}  # noqa: RUF012

    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    first_name: Mapped[str] = mapped_column(String(100))
    last_name: Mapped[str] = mapped_column(String(100))
    email: Mapped[str] = mapped_column(String(320))
    # Lower-cased email: uniqueness "without regard to case", portable across backends.
    email_key: Mapped[str] = mapped_column(String(320), unique=True)
    phone: Mapped[str | None] = mapped_column(String(50))
    street: Mapped[str | None] = mapped_column(String(200))
    city: Mapped[str | None] = mapped_column(String(100))
    state: Mapped[str | None] = mapped_column(String(100))
    postal_code: Mapped[str | None] = mapped_column(String(20))
    country: Mapped[str | None] = mapped_column(String(100))
    version: Mapped[int] = mapped_column(Integer, default=1)
    crm_id: Mapped[str | None] = mapped_column(String(100))
    crm_synced_version: Mapped[int | None] = mapped_column(Integer)
    # Kafka mode: the newest version handed to the broker, and the newest one the CRM
    # dead-lettered; the CRM's word (`crm_synced_version`) catches up through the status
    # topic. Null in HTTP mode, where a delivery is the CRM's word itself.
    crm_published_version: Mapped[int | None] = mapped_column(Integer)
    crm_dead_version: Mapped[int | None] = mapped_column(Integer)
    created_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utc_now)
    updated_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utc_now)

    # Optimistic locking: every UPDATE and DELETE checks the version it read, so two
    # concurrent writers cannot both succeed (the loser gets 409).
    __mapper_args__ = {"version_id_col": version}  # noqa: RUF012
