"""A run of customer events applied in one transaction (`Applier.apply_run`), on the sync
connection of one greenlet (`AsyncConnection.run_sync`), in SQLAlchemy Core.

The records and version rows of the run's customers are read up front (one query each),
every event is applied to that state in memory, and the writes are made at the end: the
records gone or replaced deleted, the new ones inserted and the changed ones updated (one
statement each, `store.write_customer_rows`), then the version rows
(`ledger.write_versions`), then the request log (`store.insert_log_rows`).
Deletes come first, so a stored record deleted and created again in one run (a new CRM
id, the same external id) is gone before its successor is inserted.

Why not the ORM session of the HTTP server: at a steady 216 events a second the consumer
spent about half its CPU in SQLAlchemy, in the ORM's loading and flushing and in the
async hand-off of each of a transaction's statements; with one hand-off and Core rows it
needs 1.4-1.5 ms of CPU an event against 1.65-1.9 (bench/README "2026-12-08, night").
"""

from collections.abc import Sequence
from typing import Any

from sqlalchemy import Connection

from crm_mock import ledger, store
from crm_mock.events import CustomerEvent
from crm_mock.routes import CUSTOMERS_PATH

DUPLICATE_STATUS = 409


def call_of(event: CustomerEvent, crm_id: str | None) -> tuple[str, str]:
    """The HTTP call an event stands for, for the request log."""
    method = {"CREATE": "POST", "UPDATE": "PUT", "DELETE": "DELETE"}[event.event_type]
    path = f"{CUSTOMERS_PATH}/{crm_id}" if crm_id else CUSTOMERS_PATH
    return method, path


def log_row(
    event: CustomerEvent, method: str, path: str, status: int, received: Any
) -> dict[str, Any]:
    """The request log's entry for an attempt of `event`, as a row."""
    return {
        "method": method,
        "path": path,
        "status": status,
        "external_id": event.external_id,
        "idempotency_key": event.event_id,
        "body": event.model_dump(mode="json", by_alias=True),
        "received_at": received,
    }


class AppliedRun:
    """The state of the run's customers while its events are applied, and its writes."""

    def __init__(self, connection: Connection, external_ids: Sequence[str]) -> None:
        self._connection = connection
        # What the database holds (by external id), and what the run has made of it.
        self._stored = store.customer_rows_of(connection, external_ids)
        self._records: dict[str, dict[str, Any]] = dict(self._stored)
        self._stored_versions = ledger.versions_of(connection, external_ids)
        self._versions: dict[str, tuple[int, str]] = {}
        self._log: list[dict[str, Any]] = []

    def log(self, event: CustomerEvent, method: str, path: str, status: int, received: Any) -> None:
        self._log.append(log_row(event, method, path, status, received))

    def _version(self, external_id: str) -> int | None:
        made = self._versions.get(external_id)
        return made[0] if made is not None else self._stored_versions.get(external_id)

    def apply(self, event: CustomerEvent, received: Any) -> str | None:
        """Apply one event to the run's state (an event whose version the CRM holds already
        changes nothing but the log); the CRM id it leaves the customer with."""
        external_id = event.external_id
        record = self._records.get(external_id)
        crm_id: str | None = record["id"] if record else None
        known = self._version(external_id)
        if known is not None and event.rank <= known:
            self.log(event, *call_of(event, crm_id), DUPLICATE_STATUS, received)
            return crm_id
        if event.event_type == "DELETE":
            method, path, status, crm_id = "DELETE", CUSTOMERS_PATH, 404, None
            if record is not None:
                del self._records[external_id]
                path, status = f"{CUSTOMERS_PATH}/{record['id']}", 204
        else:
            assert event.customer is not None
            if record is None:
                record = store.new_customer_row(event.customer)
                method, path, status = "POST", CUSTOMERS_PATH, 201
            else:
                fields = store.customer_fields(event.customer)
                record = {**record, **fields, "updated_at": store.utc_now()}
                method, path, status = "PUT", f"{CUSTOMERS_PATH}/{record['id']}", 200
            self._records[external_id] = record
            crm_id = record["id"]
        self._versions[external_id] = (event.rank, event.event_id)
        self.log(event, method, path, status, received)
        return crm_id

    def write(self) -> None:
        """Make the run's writes (see the module's docstring)."""
        deleted, inserted, updated = self._changed()
        store.write_customer_rows(
            self._connection, deleted=deleted, inserted=inserted, updated=updated
        )
        ledger.write_versions(self._connection, self._versions, self._stored_versions.keys())
        store.insert_log_rows(self._connection, self._log)

    def _changed(self) -> tuple[list[str], list[dict[str, Any]], list[dict[str, Any]]]:
        """The CRM ids to delete, the records to insert and the rows to update (as
        `store.write_customer_rows` takes them), in the order of the external ids (a
        stable order of row locks between transactions)."""
        deleted: list[str] = []
        inserted: list[dict[str, Any]] = []
        updated: list[dict[str, Any]] = []
        for external_id in sorted(self._stored.keys() | self._records.keys()):
            before, after = self._stored.get(external_id), self._records.get(external_id)
            if after is before:
                continue
            if before is not None and (after is None or after["id"] != before["id"]):
                deleted.append(before["id"])
            if after is None:
                continue
            if before is not None and after["id"] == before["id"]:
                row = {key: value for key, value in after.items() if key != "id"}
                updated.append({"b_id": after["id"], **row})
            else:
                inserted.append(after)
        return deleted, inserted, updated
