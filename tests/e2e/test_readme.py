"""The README's curl walk-through, run as written against the real pair on the embedded
default (only the ports differ, so the test never collides with a running `make run`)."""

import asyncio
import os
import re
import subprocess
import sys
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path

import httpx
from support import eventually, free_port, loopback_client

ROOT = Path(__file__).resolve().parents[2]
BIN = Path(sys.executable).parent


def walkthrough(service_port: int, crm_port: int) -> list[str]:
    """The shell blocks from "Walk through the API" up to "Command line", ports swapped."""
    readme = (ROOT / "README.md").read_text()
    section = readme[readme.index("## Walk through") : readme.index("## Command line")]
    blocks = re.findall(r"```sh\n(.*?)```", section, re.S)
    for host in ("localhost", "127.0.0.1"):
        blocks = [
            block.replace(f"{host}:8080", f"{host}:{service_port}").replace(
                f"{host}:8081", f"{host}:{crm_port}"
            )
            for block in blocks
        ]
    return blocks


@asynccontextmanager
async def pair(
    workdir: Path, service_port: int, crm_port: int, env: dict[str, str] | None = None
) -> AsyncIterator[None]:
    """Both apps as `make run` starts them, on these ports; `env` instead of the default
    settings (the CRM mock's own API at `crm_port`)."""
    if env is None:
        env = {**os.environ, "CRM_BASE_URL": f"http://127.0.0.1:{crm_port}"}
        env.pop("DATABASE_URL", None)
    migrate = await asyncio.create_subprocess_exec(
        BIN / "customer-service", "migrate", cwd=workdir, env=env
    )
    assert await migrate.wait() == 0
    processes = [
        subprocess.Popen(  # noqa: ASYNC220 - started once, never waited on here
            [BIN / name, "serve"],
            cwd=workdir,
            env={**env, "PORT": str(port)},
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        for name, port in (("crm-mock", crm_port), ("customer-service", service_port))
    ]
    try:
        async with loopback_client() as http:
            for port in (crm_port, service_port):

                async def up(port: int = port) -> bool:
                    assert all(p.poll() is None for p in processes), "a server exited"
                    try:
                        return (await http.get(f"http://127.0.0.1:{port}/health")).is_success
                    except httpx.HTTPError:
                        return False

                await eventually(up, within=30)
        yield
    finally:
        for process in processes:
            process.terminate()
        for process in processes:
            process.wait(timeout=15)


async def test_readme_walkthrough_works_verbatim(tmp_path: Path) -> None:
    service_port, crm_port = free_port(), free_port()
    service = f"http://127.0.0.1:{service_port}"
    outputs: list[str] = []
    async with pair(tmp_path, service_port, crm_port), loopback_client(service) as http:

        async def idle() -> bool:
            return "crm_sync_deliveries_in_flight 0.0\n" in (await http.get("/metrics")).text

        for block in walkthrough(service_port, crm_port):
            # A reader takes longer than the service between two blocks: let it settle.
            await eventually(idle)
            process = await asyncio.create_subprocess_exec(
                "bash",
                "-euo",
                "pipefail",
                "-c",
                block,
                stdout=asyncio.subprocess.PIPE,
                stderr=asyncio.subprocess.STDOUT,
            )
            out, _ = await asyncio.wait_for(process.communicate(), 60)
            outputs.append(out.decode())
            assert process.returncode == 0, f"{block}\n---\n{outputs[-1]}"
        output = "\n".join(outputs)
        assert '"status":500' not in output, output
        assert "HTTP/1.1 201 Created" in output
        assert re.search(r"412\n", output), "the stale If-Match answers 412"
        # The two deletes of the customer service, and the mock HubSpot face's archive.
        assert len(re.findall(r"204\n", output)) == 3, "every delete answers 204"
        assert '"status":"failed"' in output, "the outage shows a failed request"
        assert '"status":"dead"' in output, "the permanent failure shows a dead request"

        async def synced() -> bool:
            customer = (await http.get("/api/customers/1")).json()
            return bool(customer["crm"]["status"] == "synced")

        await eventually(synced)
        assert (await http.get("/api/failed-requests")).json()["total"] == 0
        assert (await http.get("/api/customers/1")).json()["lastName"] == "Lovelace"
