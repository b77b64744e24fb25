"""The reconciliation report, as the API and the command show it."""

from datetime import datetime

from pydantic import Field

from customer_service.schemas import CamelModel


class ReconciliationReport(CamelModel):
    """One run: what was compared, the drift found, and whether its fixes were queued."""

    checked: int
    # Customers left out because requests of theirs are still on the way to the CRM.
    skipped: int
    missing: list[int]
    extra: list[str]
    different: list[int]
    repaired: bool
    # Fixes queued in failed_requests by this run (0 without repair).
    queued: int
    # The same by kind, for the metrics (not part of the report's JSON).
    queued_by_kind: dict[str, int] = Field(default_factory=dict, exclude=True)
    started_at: datetime
    finished_at: datetime

    @property
    def drift(self) -> int:
        return len(self.missing) + len(self.extra) + len(self.different)

    @property
    def drift_left(self) -> bool:
        """Drift this run found and did not queue a fix for."""
        return self.queued < self.drift
