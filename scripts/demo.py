"""`make demo`: a narrated walk-through of a CRM outage on the embedded SQLite default.

Starts the CRM mock and the customer service on free loopback ports with their data in a
temporary folder, then: creates a customer, takes the CRM down, updates the customer, shows
the failed request, brings the CRM back, runs a retry pass and shows both sides equal.
The servers' own output goes to a log file in the temporary folder, not the terminal.

Settings (optional): DEMO_CRM_PORT and DEMO_PORT choose the ports when those are free
(otherwise a free port is picked), DEMO_KEEP=1 keeps the temporary folder.
"""

from __future__ import annotations

import json
import os
import shlex
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from types import FrameType
from typing import IO, Any

import httpx
from processes import (
    ProcessError,
    ServerProcess,
    console_script,
    free_port,
    port_is_free,
    wait_healthy,
)

POLL_SECONDS = 10.0
ADDRESS_PARTS = ("street", "city", "state", "postalCode", "country")
COMPARED_FIELDS = ("externalId", "firstName", "lastName", "email", "phone", "address")

ADA: dict[str, Any] = {
    "firstName": "Ada",
    "lastName": "Lovelace",
    "email": "ada@example.com",
    "phone": "+44 20 7946 0000",
    "address": {
        "street": "12 St James's Square",
        "city": "London",
        "state": None,
        "postalCode": "SW1Y 4JH",
        "country": "GB",
    },
}
ADA_UPDATED: dict[str, Any] = {
    **ADA,
    "lastName": "King",
    "address": {**ADA["address"], "street": "Ockham Park", "city": "Ockham", "postalCode": None},
}


class DemoError(Exception):
    """A step did not go as the story says; the message says what happened."""


# --------------------------------------------------------------------------- output


def say(text: str = "") -> None:
    print(text, flush=True)


def step(number: int, text: str) -> None:
    say()
    say(f"[{number}] {text}")


def show(data: Any) -> None:
    for line in json.dumps(data, indent=2, ensure_ascii=False).splitlines():
        say(f"    {line}")


def pick(data: dict[str, Any], *fields: str) -> dict[str, Any]:
    return {field: data.get(field) for field in fields}


# --------------------------------------------------------------------------- ports


def choose_port(variable: str) -> int:
    """The port named by `variable` when it is set and free, else any free port."""
    wanted = os.environ.get(variable, "").strip()
    if wanted:
        if not wanted.isdigit() or not 0 < int(wanted) < 65536:
            raise DemoError(f"{variable}={wanted!r} is not a port number")
        if port_is_free(int(wanted)):
            return int(wanted)
        say(f"(port {wanted} from {variable} is busy, using a free one)")
    return free_port()


def start_server(
    name: str, argv: list[str], env: dict[str, str], folder: Path, log: IO[str], base_url: str
) -> ServerProcess:
    """A server whose output goes to the demo's log, after a line naming it."""
    log.write(f"\n===== {name}: {shlex.join(argv)}\n")
    log.flush()
    return ServerProcess(
        name,
        argv,
        env,
        cwd=folder,
        log_path=Path(log.name),
        base_url=base_url,
        stop_signal=signal.SIGINT,
    )


# --------------------------------------------------------------------------- HTTP


class Api:
    """An HTTP client that echoes each call as a curl command line before making it."""

    def __init__(self, servers: list[ServerProcess]) -> None:
        self.client = httpx.Client(timeout=10.0)
        self.servers = servers

    def close(self) -> None:
        self.client.close()

    def call(
        self,
        method: str,
        url: str,
        body: Any = None,
        *,
        expect: int = 200,
        echo: bool = True,
        params: dict[str, str | int] | None = None,
    ) -> Any:
        full = str(httpx.URL(url, params=params)) if params else url
        if echo:
            shown = full.removeprefix("http://")
            command = ["curl", "-s"] if method == "GET" else ["curl", "-s", "-X", method]
            command.append(shown)
            if body is not None:
                command += ["-H", "Content-Type: application/json"]
                command += ["-d", json.dumps(body, ensure_ascii=False)]
            say(f"  $ {shlex.join(command)}")
        try:
            response = self.client.request(method, full, json=body)
        except httpx.TransportError as error:
            for server in self.servers:
                server.check_alive()
            raise DemoError(f"{method} {full} failed: {error!r}") from error
        if response.status_code != expect:
            raise DemoError(
                f"{method} {full} answered {response.status_code}, expected {expect}: "
                f"{response.text[:500]}"
            )
        return response.json() if response.content else None

    def wait_for(self, what: str, fetch: Callable[[], Any], done: Callable[[Any], bool]) -> Any:
        """Poll `fetch` (silently) until `done` holds, or fail after POLL_SECONDS."""
        deadline = time.monotonic() + POLL_SECONDS
        while True:
            value = fetch()
            if done(value):
                return value
            if time.monotonic() > deadline:
                raise DemoError(f"gave up waiting for {what}; last answer: {json.dumps(value)}")
            time.sleep(0.05)


# --------------------------------------------------------------------------- the story


def crm_view(customer: dict[str, Any]) -> dict[str, Any]:
    """The customer as the CRM should hold it (its CrmCustomerRequest)."""
    address = customer.get("address") or {}
    parts = [address.get(name) for name in ADDRESS_PARTS]
    return {
        "externalId": str(customer["id"]),
        "firstName": customer["firstName"],
        "lastName": customer["lastName"],
        "email": customer["email"],
        "phone": customer.get("phone"),
        "address": ", ".join(part for part in parts if part),
    }


def run_story(api: Api, service: str, crm: str) -> None:
    def customer(customer_id: int) -> Any:
        return api.call("GET", f"{service}/api/customers/{customer_id}", echo=False)

    def crm_records(customer_id: int, echo: bool = False) -> list[dict[str, Any]]:
        page = api.call(
            "GET", f"{crm}/api/crm/customers", params={"externalId": customer_id}, echo=echo
        )
        items: list[dict[str, Any]] = page["items"]
        return items

    def failed_requests(customer_id: int, echo: bool = False) -> list[dict[str, Any]]:
        page = api.call(
            "GET",
            f"{service}/api/failed-requests",
            params={"customerId": customer_id},
            echo=echo,
        )
        items: list[dict[str, Any]] = page["items"]
        return items

    crm_fields = (
        "id",
        "externalId",
        "firstName",
        "lastName",
        "email",
        "phone",
        "address",
        "updatedAt",
    )

    # 1 ---------------------------------------------------------------------------------
    step(1, "Create a customer. The service answers after its own commit; the CRM follows.")
    created = api.call("POST", f"{service}/api/customers", ADA, expect=201)
    customer_id: int = created["id"]
    show(pick(created, "id", "firstName", "lastName", "version", "crm"))
    synced = api.wait_for(
        "the new customer to reach the CRM",
        lambda: customer(customer_id),
        lambda c: c["crm"]["status"] == "synced",
    )
    say(f"  A moment later the customer is synced: crm = {json.dumps(synced['crm'])}")
    say("  The CRM's own record (its own id; the address is one string):")
    records = crm_records(customer_id, echo=True)
    if len(records) != 1:
        raise DemoError(f"expected one CRM record for externalId {customer_id}, got {records}")
    before = records[0]
    show(pick(before, *crm_fields))

    # 2 ---------------------------------------------------------------------------------
    step(2, "Take the CRM down: every CRM customer call now answers 503.")
    faults = api.call("PUT", f"{crm}/api/crm/_faults", {"down": True, "statusCode": 503})
    show(pick(faults, "down", "statusCode"))

    # 3 ---------------------------------------------------------------------------------
    step(3, "Update the customer while the CRM is down (new last name, new address).")
    started = time.perf_counter()
    updated = api.call("PUT", f"{service}/api/customers/{customer_id}", ADA_UPDATED)
    elapsed_ms = (time.perf_counter() - started) * 1000
    say(f"  Answered 200 in {elapsed_ms:.0f} ms: the write does not wait for the CRM.")
    show(pick(updated, "id", "lastName", "address", "version"))
    api.wait_for(
        "the update to be recorded as a failed request",
        lambda: failed_requests(customer_id),
        lambda items: any(item["status"] == "failed" for item in items),
    )
    say("  The delivery failed; the request is kept in the failed_requests table:")
    rows = failed_requests(customer_id, echo=True)
    request_fields = ("id", "operation", "status", "attempts", "lastError", "nextAttemptAt")
    show([pick(row, *request_fields) for row in rows])
    state = api.wait_for(
        "the customer's CRM status to read failed",
        lambda: customer(customer_id),
        lambda c: c["crm"]["status"] == "failed",
    )
    say(f"  The customer is at version {state['version']}, crm = {json.dumps(state['crm'])}")
    say("  The CRM's request log (never faulted) shows the update it turned away:")
    log = api.call(
        "GET", f"{crm}/api/crm/_requests", params={"externalId": customer_id, "limit": 5}
    )
    writes = [entry for entry in log["items"] if entry["method"] != "GET"]
    show([pick(entry, "method", "path", "status", "receivedAt") for entry in writes])

    # 4 ---------------------------------------------------------------------------------
    step(4, "Bring the CRM back.")
    faults = api.call("PUT", f"{crm}/api/crm/_faults", {"down": False})
    show(pick(faults, "down"))
    say("  It still holds the old record: nothing has retried the update yet.")
    stale = crm_records(customer_id, echo=True)
    for record in stale:
        show(pick(record, *crm_fields))
    if [crm_view(updated)] == [pick(record, *COMPARED_FIELDS) for record in stale]:
        say("  (The service's recovery probe already delivered the update.)")
    elif [crm_view(created)] != [pick(record, *COMPARED_FIELDS) for record in stale]:
        raise DemoError("the CRM record is neither the old nor the new state of the customer")

    # 5 ---------------------------------------------------------------------------------
    step(5, "Run a retry pass now (the retry job would do the same on its next tick).")
    report = api.call("POST", f"{service}/api/failed-requests/retry")
    show(pick(report, "attempted", "delivered", "failed", "dead"))

    # 6 ---------------------------------------------------------------------------------
    step(6, "The retry landed: nothing is left to deliver and both sides agree.")
    api.wait_for(
        "the failed requests of the customer to be gone",
        lambda: failed_requests(customer_id),
        lambda items: not items,
    )
    left = api.call("GET", f"{service}/api/failed-requests", params={"customerId": customer_id})
    show(pick(left, "items", "total"))
    api.wait_for(
        "the customer to be synced at its latest version",
        lambda: customer(customer_id),
        lambda c: c["crm"]["status"] == "synced" and c["crm"]["syncedVersion"] == c["version"],
    )
    final = api.call("GET", f"{service}/api/customers/{customer_id}")
    show(pick(final, "id", "firstName", "lastName", "version", "crm"))
    records = crm_records(customer_id, echo=True)
    if len(records) != 1:
        raise DemoError(f"expected one CRM record for externalId {customer_id}, got {records}")
    record = records[0]
    show(pick(record, *crm_fields))

    say("  Field by field (customer service | CRM):")
    expected = crm_view(final)
    width = max(len(name) for name in COMPARED_FIELDS)
    different = []
    for name in COMPARED_FIELDS:
        ours, theirs = expected[name], record.get(name)
        mark = "==" if ours == theirs else "!="
        say(
            f"    {name:<{width}}  {json.dumps(ours, ensure_ascii=False)} {mark} "
            f"{json.dumps(theirs, ensure_ascii=False)}"
        )
        if ours != theirs:
            different.append(name)
    if record.get("id") != final["crm"]["id"]:
        different.append("id (the customer's crm.id)")
    if different:
        raise DemoError(f"the two sides differ in: {', '.join(different)}")
    say()
    say("both sides equal")


# --------------------------------------------------------------------------- main


def _on_sigterm(signum: int, frame: FrameType | None) -> None:
    raise KeyboardInterrupt


@contextmanager
def workspace() -> Iterator[Path]:
    folder = Path(tempfile.mkdtemp(prefix="crm-sync-demo-"))
    try:
        yield folder
    finally:
        if os.environ.get("DEMO_KEEP") != "1":
            # Keep the log readable after the demo: only the databases go.
            for database in folder.glob("*.db*"):
                database.unlink(missing_ok=True)


def _tail(path: Path, lines: int = 20) -> str:
    try:
        text = path.read_text(errors="replace").splitlines()
    except OSError:
        return ""
    return "\n".join(f"    | {line}" for line in text[-lines:])


def main() -> int:
    signal.signal(signal.SIGTERM, _on_sigterm)
    servers: list[ServerProcess] = []
    with workspace() as folder:
        log_path = folder / "servers.log"
        code = 0
        try:
            with log_path.open("a", encoding="utf-8") as log:
                code = _run(folder, log, servers)
        except (DemoError, ProcessError) as error:
            say()
            say(f"demo failed: {error}")
            tail = _tail(log_path)
            if tail:
                say(f"  last lines of {log_path}:")
                say(tail)
            code = 1
        except KeyboardInterrupt:
            say()
            say("demo interrupted")
            code = 130
        finally:
            for server in reversed(servers):
                try:
                    server.stop()
                except Exception as error:  # stopping must go on for the other server
                    say(f"could not stop the {server.name}: {error!r}")
        say()
        say(f"Servers stopped. Their output: {log_path}")
        return code


def _run(folder: Path, log: IO[str], servers: list[ServerProcess]) -> int:
    say("CRM outage demo: the customer service keeps a CRM in step, and survives it going down.")
    customer_service = console_script("customer-service")
    crm_mock = console_script("crm-mock")
    crm_port = choose_port("DEMO_CRM_PORT")
    service_port = choose_port("DEMO_PORT")
    while service_port == crm_port:
        service_port = free_port()
    crm = f"http://127.0.0.1:{crm_port}"
    service = f"http://127.0.0.1:{service_port}"

    # The servers run in the temporary folder so that no `.env` of the caller's folder
    # applies; the variables that would change the story are set explicitly.
    base = {**os.environ, "HOST": "127.0.0.1", "LOG_FORMAT": "text", "CRM_API_TOKEN": ""}
    crm_env = {
        **base,
        "PORT": str(crm_port),
        "CRM_DATABASE_URL": f"sqlite+aiosqlite:///{folder / 'crm_mock.db'}",
    }
    service_env = {
        **base,
        "PORT": str(service_port),
        "DATABASE_URL": f"sqlite+aiosqlite:///{folder / 'customer_service.db'}",
        "CRM_BASE_URL": crm,
        "SYNC_MODE": "http",
        "API_KEY": "",
        # Neither the retry job nor the recovery probe fires during the demo: the retry
        # that lands is the one the demo asks for.
        "RETRY_INTERVAL_SECONDS": "3600",
        "RECOVERY_PROBE_SECONDS": "3600",
    }

    say(f"Working folder: {folder}")
    say("Migrating the customer service's SQLite database...")
    log.write(f"===== migrate: {customer_service} migrate\n")
    log.flush()
    migrated = subprocess.run(
        [customer_service, "migrate"],
        env=service_env,
        cwd=folder,
        stdin=subprocess.DEVNULL,
        stdout=log,
        stderr=subprocess.STDOUT,
        timeout=120,
        check=False,
    )
    if migrated.returncode != 0:
        raise DemoError(f"customer-service migrate exited with code {migrated.returncode}")

    say(f"Starting the CRM mock on {crm} and the customer service on {service}...")
    servers.append(start_server("CRM mock", [crm_mock, "serve"], crm_env, folder, log, crm))
    servers.append(
        start_server(
            "customer service", [customer_service, "serve"], service_env, folder, log, service
        )
    )
    for server in servers:
        wait_healthy(server)
    say("Both are up.")

    api = Api(servers)
    try:
        run_story(api, service, crm)
    finally:
        api.close()
    return 0


if __name__ == "__main__":
    sys.exit(main())
