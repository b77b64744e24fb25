"""Applying customer events to the CRM's store, under the shared fault switch, as the HTTP
API would have: one event (`Applier.apply`, also `crm-mock dlq replay`'s) or a run of a
partition's events in one transaction shared by the partitions (`Applier.apply_run`)."""

import asyncio
import random
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from sqlalchemy import Connection
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from crm_mock import ledger, store
from crm_mock.applied_run import DUPLICATE_STATUS, AppliedRun, call_of, log_row
from crm_mock.events import CustomerEvent
from crm_mock.faults import decide_fault
from crm_mock.routes import CUSTOMERS_PATH

TRANSIENT_STATUSES = frozenset({408, 409, 425, 429})


@dataclass(frozen=True)
class Applied:
    crm_id: str | None


@dataclass(frozen=True)
class Held:
    """The customer has an open dead letter: this event must follow it."""

    letter_id: int


@dataclass(frozen=True)
class Refused:
    error: str
    permanent: bool


Result = Applied | Held | Refused


class Applier:
    """Applies one event to the store, under the shared fault switch; used by the consumer
    and by `crm-mock dlq replay`."""

    def __init__(
        self, sessionmaker: async_sessionmaker[AsyncSession], rng: random.Random | None = None
    ) -> None:
        self._sessionmaker = sessionmaker
        self._rng = rng or random.Random()
        self._asked: list[_AskedRun] = []
        self._one_transaction = asyncio.Lock()

    async def healthy(self) -> bool:
        async with self._sessionmaker() as session, session.begin():
            return not (await ledger.shared_faults(session)).down

    async def apply(self, event: CustomerEvent, *, replay: bool = False) -> Result:
        """One attempt. `replay`: an operator re-applies a dead letter (not held by it)."""
        received = store.utc_now()
        async with self._sessionmaker() as session, session.begin():
            faults = await ledger.shared_faults(session)
            if not replay:
                letter = await ledger.open_letter_of(session, event.external_id)
                if letter is not None and letter.event_id != event.event_id:
                    return Held(letter.id)
                if letter is not None:
                    return Refused(f"dead-lettered already: {letter.error}", permanent=True)
        if faults.latency_ms:
            await asyncio.sleep(faults.latency_ms / 1000)
        fault = decide_fault(faults, self._rng.random())
        async with self._sessionmaker() as session, session.begin():
            if fault is not None:
                method, path = call_of(event, None)
                await _log(session, event, method, path, fault.status_code, received)
                return _refused(fault.status_code, fault.reason)
            return await _apply(session, event, received)

    async def apply_run(self, events: Sequence[CustomerEvent]) -> list[Result]:
        """Attempt a run of one partition's events, in order, in one transaction, shared
        with the runs other partitions ask for meanwhile (each stops on its own, as below).

        The switch is read once per transaction. A run stops before an event whose
        customer has an open dead letter, and before its first event when the switch adds
        latency (each event then waits outside any transaction, in `apply`); it stops
        after an event the switch refuses, that attempt logged as `apply` logs it. The
        results are those of the events attempted, in order: all `Applied` but perhaps
        the last, a `Refused`. A database error rolls the transaction back and raises:
        nothing was attempted."""
        asked = _AskedRun(list(events), asyncio.get_running_loop().create_future())
        self._asked.append(asked)
        async with self._one_transaction:
            if not asked.results.done():
                # Let the other partitions' tasks, ready to run, ask before we begin.
                await asyncio.sleep(0)
                runs, self._asked = self._asked, []
                try:
                    results = await self._apply_runs([run.events for run in runs])
                except Exception as exc:
                    for run in runs:
                        run.results.set_exception(exc)
                except BaseException:
                    for run in runs:  # cancelled: so is every partition's task
                        run.results.cancel()
                    raise
                else:
                    for run, result in zip(runs, results, strict=True):
                        run.results.set_result(result)
        return asked.results.result()

    async def _apply_runs(self, runs: list[list[CustomerEvent]]) -> list[list[Result]]:
        async with self._sessionmaker() as session, session.begin():
            connection = await session.connection()
            return await connection.run_sync(self._apply_runs_on, runs)

    def _apply_runs_on(
        self, connection: Connection, runs: list[list[CustomerEvent]]
    ) -> list[list[Result]]:
        faults = ledger.faults_in(connection)
        if faults.latency_ms:
            return [[] for _ in runs]
        ids = list({event.external_id for events in runs for event in events})
        held = ledger.open_letters_in(connection, ids)
        run = AppliedRun(connection, ids)
        outcomes: list[list[Result]] = []
        for events in runs:
            results: list[Result] = []
            outcomes.append(results)
            for event in events:
                if event.external_id in held:
                    break
                received = store.utc_now()
                fault = decide_fault(faults, self._rng.random())
                if fault is not None:
                    run.log(event, *call_of(event, None), fault.status_code, received)
                    results.append(_refused(fault.status_code, fault.reason))
                    break
                results.append(Applied(run.apply(event, received)))
        run.write()
        return outcomes


@dataclass(frozen=True)
class _AskedRun:
    events: list[CustomerEvent]
    results: asyncio.Future[list[Result]]


async def _apply(session: AsyncSession, event: CustomerEvent, received: Any) -> Applied:
    external_id = event.external_id
    record = await store.find_customer_by_external_id(session, external_id)
    known = await ledger.applied_version(session, external_id)
    if known is not None and event.rank <= known:
        method, path = call_of(event, record.id if record else None)
        await _log(session, event, method, path, DUPLICATE_STATUS, received)
        return Applied(record.id if record else None)
    if event.event_type == "DELETE":
        status = 404
        if record is not None:
            await store.delete_customer(session, record.id)
            status = 204
        crm_id = None
        method, path = "DELETE", f"{CUSTOMERS_PATH}/{record.id if record else ''}".rstrip("/")
    else:
        assert event.customer is not None
        if record is None:
            record = await store.create_customer(session, event.customer)
            method, path, status = "POST", CUSTOMERS_PATH, 201
        else:
            record = await store.replace_customer(session, record.id, event.customer)
            method, path, status = "PUT", f"{CUSTOMERS_PATH}/{record.id}", 200
        crm_id = record.id
    await ledger.note_version(session, external_id, event.rank, event.event_id)
    await _log(session, event, method, path, status, received)
    return Applied(crm_id)


def _refused(status: int, reason: str) -> Refused:
    return Refused(
        f"CRM answered {status}: fault injected: {reason}", permanent=_is_permanent(status)
    )


async def _log(
    session: AsyncSession,
    event: CustomerEvent,
    method: str,
    path: str,
    status: int,
    received: Any,
) -> None:
    entry = store.RequestLogEntry(**log_row(event, method, path, status, received))
    await store.append_request_log(session, entry)


def _is_permanent(status: int) -> bool:
    return 400 <= status < 500 and status not in TRANSIENT_STATUSES
