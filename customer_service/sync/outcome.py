"""What one delivery attempt came to."""

from dataclasses import dataclass


@dataclass(frozen=True)
class Delivered:
    crm_id: str | None


@dataclass(frozen=True)
class Failed:
    error: str
    status: int | None = None
    retry_after: str | None = None


Outcome = Delivered | Failed
