"""What this replica knows of the CRM: whether deliveries are held, and why.

`CrmHealth` is the circuit breaker of guarantee 7, shared by the delivery engine (live
deliveries and passes), the retry job's probe and the surfaces that show the hold
(`/ready`, the dashboard, the metrics).
"""

import logging
from collections.abc import Callable
from dataclasses import dataclass, field

from customer_service.sync.hold import HoldReason

log = logging.getLogger(__name__)


@dataclass
class CrmHealth:
    """What this replica last saw of the CRM, and its circuit breaker (guarantee 7).

    A failure that speaks for the whole CRM (`hold.hold_kind`: no answer, a certificate
    refused, 401, 403, 429, 502, 503, 504) makes it `suspect` and names the `hold`. While
    it is suspect and a probe runs (`probing`: the process's retry job asks the CRM, one
    call at a time, whether it is back), the breaker is open: writes no longer kick a
    delivery of their own; their requests wait in the outbox for the pass the probe
    starts when the CRM answers again. Without a probe (an API-only process, tests driving
    passes themselves) it never opens.

    A new process starts suspect, so its first probe (and the forced pass that follows a
    good answer) sends what an earlier process left behind without waiting for backoff.
    Each change of the hold's kind is logged once, and told to `on_hold` (the engine
    notes it on the requests it holds); the detail shown is the latest one's.
    """

    suspect: bool = True
    probing: bool = False
    hold: HoldReason | None = None
    on_recovery: list[Callable[[], None]] = field(default_factory=list)
    on_hold: list[Callable[[HoldReason], None]] = field(default_factory=list)

    @property
    def breaker_open(self) -> bool:
        return self.probing and self.suspect

    @property
    def held_by(self) -> HoldReason | None:
        """Why deliveries are held now (None: they are not, or the cause is not known yet)."""
        return self.hold if self.suspect else None

    def mark_failing(self, hold: HoldReason) -> None:
        """A call failed for the CRM as a whole: suspect it, and say why once per change."""
        self.suspect = True
        # A change of kind is news; another wording of the same kind (a refused connection,
        # then a timeout) only refreshes the detail shown, without a log line or notes.
        news = self.hold is None or hold.kind != self.hold.kind
        self.hold = hold
        if not news:
            return
        log.warning("CRM deliveries held (%s): %s", hold.kind, hold.detail)
        for callback in self.on_hold:
            callback(hold)

    def mark_healthy(self) -> None:
        """The CRM answered well: close the breaker and, if it was open, tell the listeners
        (the retry job's recovery pass, the engine's held kicks)."""
        if self.hold is not None:
            log.warning("CRM deliveries resume: the CRM answers again")
            self.hold = None
        if self.suspect:
            self.suspect = False
            for callback in self.on_recovery:
                callback()
