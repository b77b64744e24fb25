"""Applying customer events to the CRM's store, under the shared fault switch, as the HTTP
API would have: one event (`Applier.apply`, also `crm-mock dlq replay`'s) or a run of a
partition's events in one transaction shared by the partitions (`Applier.apply_run`)."""

import asyncio
import random
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from crm_mock import ledger, store
from crm_mock.events import CustomerEvent
from crm_mock.faults import decide_fault
from crm_mock.routes import CUSTOMERS_PATH

TRANSIENT_STATUSES = frozenset({408, 409, 425, 429})
DUPLICATE_STATUS = 409


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
                method, path = _call_of(event, None)
                await _log(session, event, method, path, fault.status_code, received)
                return Refused(
                    f"CRM answered {fault.status_code}: fault injected: {fault.reason}",
                    permanent=_is_permanent(fault.status_code),
                )
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
        ids = list({event.external_id for events in runs for event in events})
        entries: list[store.RequestLogEntry] = []
        outcomes: list[list[Result]] = []
        async with self._sessionmaker() as session, session.begin():
            faults = await ledger.shared_faults(session)
            if faults.latency_ms:
                return [[] for _ in runs]
            held = await ledger.with_open_letters(session, ids)
            run = _Run(
                session,
                await store.find_customers_by_external_ids(session, ids),
                await ledger.applied_versions(session, ids),
                entries,
            )
            for events in runs:
                results: list[Result] = []
                outcomes.append(results)
                for event in events:
                    if event.external_id in held:
                        break
                    received = store.utc_now()
                    fault = decide_fault(faults, self._rng.random())
                    if fault is not None:
                        method, path = _call_of(event, None)
                        entries.append(_entry(event, method, path, fault.status_code, received))
                        results.append(
                            Refused(
                                f"CRM answered {fault.status_code}: fault injected: {fault.reason}",
                                permanent=_is_permanent(fault.status_code),
                            )
                        )
                        break
                    results.append(await run.apply(event, received))
            await run.write()
            await store.append_request_log_entries(session, entries)
        return outcomes


@dataclass(frozen=True)
class _AskedRun:
    events: list[CustomerEvent]
    results: asyncio.Future[list[Result]]


class _Run:
    """`_apply` for many events in one session: the records and versions of the run's
    customers are read up front and kept up to date here, the writes made once at the end
    (`write`), and the log entries inserted in one statement by the caller.

    New records and version rows are never added to the session: they wait here and are
    inserted by one Core statement each (profiled at a steady 400 events/s, the ORM's
    flush of the new objects was a third of the consumer's CPU). Those read up front are
    the session's, and its flush writes their changes."""

    def __init__(
        self,
        session: AsyncSession,
        records: dict[str, store.CrmCustomerRecord],
        versions: dict[str, ledger.EventVersion],
        entries: list[store.RequestLogEntry],
    ) -> None:
        self._session = session
        self._records = records
        self._versions = versions
        self._entries = entries
        # By external id: made in this run, not inserted yet.
        self._new_records: dict[str, store.CrmCustomerRecord] = {}
        self._new_versions: dict[str, ledger.EventVersion] = {}

    async def write(self) -> None:
        """Insert what the run made, then flush the changes of what it read."""
        await store.insert_new_customers(self._session, list(self._new_records.values()))
        await ledger.insert_versions(self._session, list(self._new_versions.values()))
        await self._session.flush()

    async def apply(self, event: CustomerEvent, received: Any) -> Applied:
        external_id = event.external_id
        record = self._records.get(external_id)
        known = self._versions.get(external_id)
        if known is not None and event.rank <= known.version:
            method, path = _call_of(event, record.id if record else None)
            self._entries.append(_entry(event, method, path, DUPLICATE_STATUS, received))
            return Applied(record.id if record else None)
        crm_id: str | None
        if event.event_type == "DELETE":
            method, path, status, crm_id = "DELETE", CUSTOMERS_PATH, 404, None
            if record is not None:
                if self._new_records.pop(external_id, None) is None:
                    await self._session.delete(record)
                    # At once: a record made later in this run may take the same
                    # external id, and is inserted at the end.
                    await self._session.flush()
                del self._records[external_id]
                path, status = f"{CUSTOMERS_PATH}/{record.id}", 204
        else:
            assert event.customer is not None
            if record is None:
                record = store.new_customer(event.customer)
                self._new_records[external_id] = record
                self._records[external_id] = record
                method, path, status = "POST", CUSTOMERS_PATH, 201
            else:
                store.overwrite_customer(record, event.customer)
                method, path, status = "PUT", f"{CUSTOMERS_PATH}/{record.id}", 200
            crm_id = record.id
        if known is None:
            known = ledger.EventVersion(
                external_id=external_id, version=event.rank, event_id=event.event_id
            )
            self._new_versions[external_id] = known
            self._versions[external_id] = known
        else:
            known.version = event.rank
            known.event_id = event.event_id
        self._entries.append(_entry(event, method, path, status, received))
        return Applied(crm_id)


async def _apply(session: AsyncSession, event: CustomerEvent, received: Any) -> Applied:
    external_id = event.external_id
    record = await store.find_customer_by_external_id(session, external_id)
    known = await ledger.applied_version(session, external_id)
    if known is not None and event.rank <= known:
        method, path = _call_of(event, record.id if record else None)
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


def _call_of(event: CustomerEvent, crm_id: str | None) -> tuple[str, str]:
    """The HTTP call an event stands for, for the request log."""
    method = {"CREATE": "POST", "UPDATE": "PUT", "DELETE": "DELETE"}[event.event_type]
    path = f"{CUSTOMERS_PATH}/{crm_id}" if crm_id else CUSTOMERS_PATH
    return method, path


def _entry(
    event: CustomerEvent, method: str, path: str, status: int, received: Any
) -> store.RequestLogEntry:
    return store.RequestLogEntry(
        method=method,
        path=path,
        status=status,
        external_id=event.external_id,
        idempotency_key=event.event_id,
        body=event.model_dump(mode="json", by_alias=True),
        received_at=received,
    )


async def _log(
    session: AsyncSession,
    event: CustomerEvent,
    method: str,
    path: str,
    status: int,
    received: Any,
) -> None:
    await store.append_request_log(session, _entry(event, method, path, status, received))


def _is_permanent(status: int) -> bool:
    return 400 <= status < 500 and status not in TRANSIENT_STATUSES
