"""Enqueue a CRM request in the caller's transaction (the transactional outbox).

The row commits, or rolls back, with the customer write itself: a crash at any instant
leaves either neither or both. Delivery starts only after the commit (see `dispatcher`).
"""

import uuid

from sqlalchemy.ext.asyncio import AsyncSession

from customer_service.columns import utc_now
from customer_service.crm.mapper import CustomerMapper
from customer_service.customers.models import Customer
from customer_service.sync.models import FailedRequest, Operation, RequestStatus

# Customer ids whose requests were written in this session, to kick after commit.
PENDING_KICKS = "outbox_customer_ids"


def kick_after_commit(session: AsyncSession, customer_id: int) -> None:
    """Have the dispatcher deliver `customer_id`'s requests once this session commits."""
    session.info.setdefault(PENDING_KICKS, set()).add(customer_id)


def enqueue(session: AsyncSession, customer: Customer, operation: Operation) -> FailedRequest:
    """Add the CRM request for `operation` on `customer` to the session's transaction."""
    now = utc_now()
    payload = None if operation == Operation.DELETE else CustomerMapper.to_crm(customer).to_json()
    row = FailedRequest(
        customer_id=customer.id,
        operation=operation,
        status=RequestStatus.PENDING,
        attempts=0,
        next_attempt_at=now,
        version=customer.version,
        payload=payload,
        crm_id=customer.crm_id,
        idempotency_key=str(uuid.uuid4()),
        created_at=now,
        updated_at=now,
    )
    session.add(row)
    kick_after_commit(session, customer.id)
    return row


def enqueue_record_delete(session: AsyncSession, customer_id: int, crm_id: str) -> FailedRequest:
    """Queue the DELETE of CRM record `crm_id`, kept by the CRM for `customer_id` though
    we hold no such customer (reconciliation's fix for an extra record). It waits in
    that id's queue like any DELETE, and targets the record by its CRM id."""
    now = utc_now()
    row = FailedRequest(
        customer_id=customer_id,
        operation=Operation.DELETE,
        status=RequestStatus.PENDING,
        attempts=0,
        next_attempt_at=now,
        version=0,
        payload=None,
        crm_id=crm_id,
        idempotency_key=str(uuid.uuid4()),
        created_at=now,
        updated_at=now,
    )
    session.add(row)
    kick_after_commit(session, customer_id)
    return row
