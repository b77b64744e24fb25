"""What one delivery attempt came to."""

from dataclasses import dataclass

from customer_service.sync.hold import HoldKind


@dataclass(frozen=True)
class Delivered:
    crm_id: str | None


@dataclass(frozen=True)
class Failed:
    error: str
    status: int | None = None
    retry_after: str | None = None
    # With no answer (`status` None): why, when known (`hold.hold_kind`).
    unanswered: HoldKind | None = None
    # False for one record's own failure inside a batch call the CRM answered: whatever
    # its status, it says nothing of the CRM as a whole (no hold).
    whole_call: bool = True


Outcome = Delivered | Failed
