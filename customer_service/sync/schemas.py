"""Failed-request API bodies."""

from datetime import datetime

from customer_service.schemas import CamelModel


class FailedRequestRead(CamelModel):
    id: int
    customer_id: int
    operation: str
    status: str
    attempts: int
    last_error: str | None
    next_attempt_at: datetime
    created_at: datetime
    updated_at: datetime


class RetryReport(CamelModel):
    attempted: int
    delivered: int
    failed: int
    dead: int
