"""What the HubSpot and Salesforce connectors do alike with the changes of one CRM call:
settle them all with one failure, and turn whatever the call raises into that failure
(so one call's trouble never escapes `send`, nor fails the other call of the batch).

Every text that leaves here is redacted by the connector's client (`redact`).
"""

import logging
from collections.abc import Awaitable, Callable, Iterable

from customer_service.crm.client import CrmUnreachable
from customer_service.sync.connector import Change
from customer_service.sync.outcome import Failed, Outcome

# Outcomes by `id(change)`: a batch's changes are settled in any order, answered in order.
Outcomes = dict[int, Outcome]


def fail_all(changes: Iterable[Change], failed: Failed) -> Outcomes:
    """Every change settled by the same failure."""
    return {id(change): failed for change in changes}


async def guarded(
    crm: str,
    changes: list[Change],
    call: Awaitable[Outcomes],
    redact: Callable[[str], str],
    log: logging.Logger,
    refusal: Callable[[Exception], Failed | None] | None = None,
) -> Outcomes:
    """A call's outcomes by change; whatever it raises fails them all: no answer as
    `CrmUnreachable` says, an exception `refusal` knows as it says, any other as a call
    that failed (logged, its text redacted)."""
    try:
        return await call
    except CrmUnreachable as exc:
        failed = Failed(redact(f"{crm} unreachable: {exc}"), unanswered=exc.kind)
    except Exception as exc:
        known = refusal(exc) if refusal is not None else None
        if known is not None:
            failed = known
        else:
            log.warning("%s call raised %s", crm, redact(f"{type(exc).__name__}: {exc}"))
            failed = Failed(redact(f"{crm} call failed: {type(exc).__name__}"))
    return fail_all(changes, failed)
