"""Phase 12: the drain of a backlog through the CRM mock's Salesforce face (issue 18):
`CRM_CONNECTOR=salesforce`, sObject Collections of 200 records, against the one-per-call
drain of phase 3 in the same run (the mock's own API, `CRM_BATCH_SIZE` 1).

Issue 18 asks that the `BENCH_BACKLOG` (20,000) backlog drain at >= 3x that one-per-call
rate, none dead, one Contact each. The rate is counted from the service's spawn to the
empty outbox, as phase 3's; the token is fetched by the drain's first call, inside it.
"""

from __future__ import annotations

import time
from collections import Counter
from typing import Any

from context import Bench
from harness import BenchError, ratio, say, wait_healthy
from seed import seed_backlog

BATCH_SIZE = 200
UPSERT = "/services/data/v62.0/composite/sobjects/Contact/Crm_Sync_Id__c"
TOKEN_PATH = "/services/oauth2/token"


async def salesforce_drain(bench: Bench, one_per_call: float) -> dict[str, Any]:
    """`one_per_call`: phase 3's drain rate in this run (NaN when it was not measured)."""
    n = bench.params.backlog
    say(f"phase 12: drain of {n} through the Salesforce face, collections of {BATCH_SIZE}")
    url = await bench.new_database("p12-database")
    await seed_backlog(url, n)
    crm = await bench.start_crm("p12-crm")
    spawned = time.monotonic()
    service = bench.spawn_service(
        "p12-service",
        crm,
        url,
        CRM_CONNECTOR="salesforce",
        SALESFORCE_LOGIN_URL=crm.base_url,
        SALESFORCE_CLIENT_ID="crm-sync-bench",
        SALESFORCE_CLIENT_SECRET="bench-secret",
        CRM_BATCH_SIZE=str(BATCH_SIZE),
    )
    await wait_healthy(service)

    async def drained() -> bool:
        return await bench.failed_total(service) == 0

    deadline = bench.params.drain_deadline(n)
    await bench.wait_for(f"the Salesforce drain of {n}", drained, deadline, [service, crm], 0.5)
    seconds = time.monotonic() - spawned
    dead = await bench.failed_total(service, status="dead")
    records = int((await bench.get_json(f"{crm.base_url}/api/crm/customers", limit=1))["total"])
    log = await bench.crm_log(crm)
    statuses = Counter(int(e["status"]) for e in log if e["path"] == UPSERT)
    calls = len({e["receivedAt"] for e in log if e["path"] == UPSERT})
    tokens = sum(1 for e in log if e["path"] == TOKEN_PATH)
    bench.servers.stop_all()
    if records != n:
        raise BenchError(f"the Salesforce face holds {records} Contacts after the drain, not {n}")
    per_second = n / seconds
    say(
        f"  {n} in {seconds:.1f} s = {per_second:.0f} customers/s in about {calls} calls"
        f" ({tokens} token); one per call: {one_per_call:.0f}/s; {dead} dead"
    )
    return {
        "backlog": n,
        "batchSize": BATCH_SIZE,
        "secondsFromSpawn": seconds,
        "perSecond": per_second,
        "onePerCallPerSecond": one_per_call,
        "ratio": ratio(per_second, one_per_call),
        "dead": dead,
        "tokens": tokens,
        "statuses": dict(statuses),
    }
