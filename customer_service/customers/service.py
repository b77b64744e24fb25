"""Customer writes: each one changes the row and enqueues its CRM request, in one transaction.

The service only flushes; the caller's transaction commits (see `deps.get_session`).
"""

from typing import Any, cast

from sqlalchemy import Table, insert
from sqlalchemy.exc import IntegrityError
from sqlalchemy.ext.asyncio import AsyncSession
from sqlalchemy.orm.exc import StaleDataError

from customer_service.columns import utc_now
from customer_service.customers import repository
from customer_service.customers.models import Customer
from customer_service.customers.schemas import CrmState, CrmStatus, CustomerCreate, CustomerRead
from customer_service.errors import (
    ConcurrentUpdate,
    CustomerNotFound,
    EmailTaken,
    VersionMismatch,
)
from customer_service.sync import outbox
from customer_service.sync.models import Operation

ANY_VERSION = "*"


def parse_if_match(value: str | None) -> int | None:
    """The version an `If-Match` asks for (quoted or bare); None when any will do."""
    if value is None or value.strip() == ANY_VERSION:
        return None
    text = value.strip().removeprefix("W/").strip('"')
    if not text.isdigit():
        raise VersionMismatch(f"If-Match {value!r} is not a version of this customer")
    return int(text)


def _fields(data: CustomerCreate) -> dict[str, Any]:
    """The columns a create or replace writes, from the request body."""
    address = data.address
    return {
        "first_name": data.first_name,
        "last_name": data.last_name,
        "email": str(data.email),
        "email_key": str(data.email).lower(),
        "phone": data.phone,
        "street": address.street if address else None,
        "city": address.city if address else None,
        "state": address.state if address else None,
        "postal_code": address.postal_code if address else None,
        "country": address.country if address else None,
    }


def _apply(customer: Customer, data: CustomerCreate) -> None:
    for name, value in _fields(data).items():
        setattr(customer, name, value)


# A create is one Core INSERT ... RETURNING id, compiled once, without the ORM's unit of
# work (profiled: the flush was a quarter of a write's CPU). Updates and deletes keep the
# ORM for its optimistic lock on `version`.
_customers = cast(Table, Customer.__table__)
INSERT_CUSTOMER = insert(_customers).returning(_customers.c.id)


async def _flush(session: AsyncSession, customer: Customer, email: str) -> None:
    try:
        await session.flush()
    except IntegrityError as exc:
        raise EmailTaken(email) from exc
    except StaleDataError as exc:
        raise ConcurrentUpdate(customer.id) from exc


async def create(session: AsyncSession, data: CustomerCreate) -> Customer:
    """Insert the customer and queue its CREATE; the answer is built from what was
    written (a transient `Customer`, not read back). No pre-check of the email: the
    unique index answers (as EmailTaken) in the same round trip as the insert, and
    without a race between check and insert."""
    now = utc_now()
    values: dict[str, Any] = {
        **_fields(data),
        "version": 1,
        "crm_id": None,
        "crm_synced_version": None,
        "crm_published_version": None,
        "crm_dead_version": None,
        "created_at": now,
        "updated_at": now,
    }
    try:
        new_id = (await session.execute(INSERT_CUSTOMER, values)).scalar_one()
    except IntegrityError as exc:
        raise EmailTaken(str(data.email)) from exc
    customer = Customer(id=new_id, **values)
    await outbox.enqueue(session, customer, Operation.CREATE)
    return customer


async def get(session: AsyncSession, customer_id: int) -> Customer:
    customer = await repository.get(session, customer_id)
    if customer is None:
        raise CustomerNotFound(customer_id)
    return customer


async def replace(
    session: AsyncSession, customer_id: int, data: CustomerCreate, if_match: str | None
) -> Customer:
    customer = await get(session, customer_id)
    expected = parse_if_match(if_match)
    if expected is not None and expected != customer.version:
        raise VersionMismatch(
            f"customer {customer_id} is at version {customer.version}, not {expected}"
        )
    _apply(customer, data)
    customer.updated_at = utc_now()
    # The row is written (and locked) before its request, so request ids follow versions.
    await _flush(session, customer, str(data.email))
    await outbox.enqueue(session, customer, Operation.UPDATE)
    return customer


async def delete(session: AsyncSession, customer_id: int) -> None:
    customer = await get(session, customer_id)
    await session.delete(customer)
    await _flush(session, customer, customer.email)
    await outbox.enqueue(session, customer, Operation.DELETE)


async def read(session: AsyncSession, customer_id: int) -> CustomerRead:
    """One customer as the API shows it, with its CRM sync state."""
    found = await repository.get_with_status(session, customer_id)
    if found is None:
        raise CustomerNotFound(customer_id)
    return to_read(*found)


async def page(session: AsyncSession, limit: int, offset: int) -> tuple[list[CustomerRead], int]:
    rows, total = await repository.page_with_status(session, limit, offset)
    return [to_read(customer, status) for customer, status in rows], total


def to_read(customer: Customer, sync_status: str) -> CustomerRead:
    return CustomerRead.model_validate(
        {
            "id": customer.id,
            "first_name": customer.first_name,
            "last_name": customer.last_name,
            "email": customer.email,
            "phone": customer.phone,
            "address": {
                "street": customer.street,
                "city": customer.city,
                "state": customer.state,
                "postal_code": customer.postal_code,
                "country": customer.country,
            },
            "version": customer.version,
            "created_at": customer.created_at,
            "updated_at": customer.updated_at,
            "crm": CrmState(
                id=customer.crm_id,
                status=CrmStatus(sync_status),
                synced_version=customer.crm_synced_version,
            ),
        }
    )
