"""The Prometheus metrics an on-call person alerts on, as /metrics shows them."""

from typing import Any

import httpx
from prometheus_client.parser import text_string_to_metric_families
from support import CrmControl, eventually

ADA = {"firstName": "Ada", "lastName": "Lovelace", "email": "ada@example.com"}


async def _samples(client: httpx.AsyncClient) -> dict[str, float]:
    response = await client.get("/metrics")
    assert response.status_code == 200
    assert response.headers["content-type"].startswith("text/plain")
    found = {}
    for family in text_string_to_metric_families(response.text):
        for sample in family.samples:
            labels = ",".join(f"{k}={v}" for k, v in sorted(sample.labels.items()))
            found[f"{sample.name}{{{labels}}}"] = sample.value
    return found


async def _status(client: httpx.AsyncClient, customer_id: int) -> Any:
    return (await client.get(f"/api/customers/{customer_id}")).json()["crm"]["status"]


async def test_metrics_follow_deliveries_failures_and_reconciliation(
    client: httpx.AsyncClient, crm_control: CrmControl
) -> None:
    first = (await client.post("/api/customers", json=ADA)).json()
    await eventually(lambda: _is(client, first["id"], "synced"))
    seen = await _samples(client)
    assert seen["crm_sync_deliveries_total{outcome=delivered}"] == 1
    assert seen["crm_sync_lag_seconds_count{}"] == 1
    assert 0 < seen["crm_sync_lag_seconds_sum{}"] < 5
    assert seen["crm_sync_crm_request_duration_seconds_count{method=POST,outcome=ok}"] >= 1
    assert seen["crm_sync_failed_requests{status=dead}"] == 0
    assert seen["crm_sync_oldest_undelivered_age_seconds{}"] == 0

    await crm_control.faults(down=True, statusCode=400)
    second = (await client.post("/api/customers", json={**ADA, "email": "b@example.com"})).json()
    await eventually(lambda: _is(client, second["id"], "dead"))
    await crm_control.faults(down=True, statusCode=503)
    third = (await client.post("/api/customers", json={**ADA, "email": "c@example.com"})).json()
    await eventually(lambda: _is(client, third["id"], "failed"))
    seen = await _samples(client)
    assert seen["crm_sync_deliveries_total{outcome=permanent_failure}"] == 1
    assert seen["crm_sync_deliveries_total{outcome=transient_failure}"] == 1
    assert seen["crm_sync_crm_request_duration_seconds_count{method=POST,outcome=error}"] >= 2
    assert seen["crm_sync_failed_requests{status=dead}"] == 1
    assert seen["crm_sync_failed_requests{status=failed}"] == 1
    assert seen["crm_sync_oldest_undelivered_age_seconds{}"] > 0
    assert seen["crm_sync_crm_up{}"] == 0

    await crm_control.faults(down=False)
    [record] = await crm_control.records(first["id"])
    assert (await crm_control.http.delete(f"/api/crm/customers/{record['id']}")).is_success
    assert (await client.post("/api/reconciliation")).status_code == 200
    seen = await _samples(client)
    assert seen["crm_sync_reconciliation_drift{kind=missing}"] == 1
    assert seen["crm_sync_reconciliation_fixes_queued_total{kind=missing}"] == 0
    assert (await client.post("/api/reconciliation?repair=true")).json()["queued"] == 1
    seen = await _samples(client)
    assert seen["crm_sync_reconciliation_fixes_queued_total{kind=missing}"] == 1
    assert seen["crm_sync_reconciliation_drift_found_total{kind=missing}"] == 2
    assert seen["crm_sync_reconciliation_drift{kind=extra}"] == 0
    assert seen["crm_sync_reconciliation_last_run_timestamp_seconds{}"] > 0


async def _is(client: httpx.AsyncClient, customer_id: int, status: str) -> bool:
    return bool(await _status(client, customer_id) == status)
