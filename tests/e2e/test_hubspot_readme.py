"""The README's "HubSpot" walk-through, run verbatim against the pair as
`CRM_CONNECTOR=hubspot make run` starts it (the Makefile's defaults: HUBSPOT_BASE_URL at
the CRM mock, a token it accepts); only the ports differ."""

import os
import sys
from pathlib import Path

from support import free_port, loopback_client, settled
from test_readme import pair
from walkthrough import ROOT, run_blocks, section_blocks

BIN = Path(sys.executable).parent


def make_run_env(crm_port: int) -> dict[str, str]:
    """What `CRM_CONNECTOR=hubspot make run` gives the service (Makefile, HUBSPOT_RUN_ENV)."""
    makefile = (ROOT / "Makefile").read_text()
    assert "HUBSPOT_BASE_URL:-http://127.0.0.1:8081" in makefile
    assert "CRM_API_TOKEN:-pat-local-make-run" in makefile
    env = {k: v for k, v in os.environ.items() if not k.startswith(("HUBSPOT_", "CRM_"))}
    env.pop("DATABASE_URL", None)
    return {
        **env,
        "CRM_CONNECTOR": "hubspot",
        "HUBSPOT_BASE_URL": f"http://127.0.0.1:{crm_port}",
        "HUBSPOT_ACCESS_TOKEN": "pat-local-make-run",
    }


async def test_the_hubspot_walkthrough_works_verbatim(tmp_path: Path) -> None:
    service_port, crm_port = free_port(), free_port()
    async with (
        pair(tmp_path, service_port, crm_port, make_run_env(crm_port)),
        loopback_client(f"http://127.0.0.1:{service_port}") as http,
    ):
        blocks = section_blocks("HubSpot", service_port, crm_port)
        outputs = await run_blocks(blocks, lambda: settled(http))
    assert len(outputs) == 8, outputs
    created, synced, updated, listed, _, dead, deleted, gone = outputs
    assert '"status":"pending"' in created
    assert '"status":"synced"' in synced and '"city":"Arlington"' in synced
    assert '"zip":"22202"' in synced
    assert '"version":2' in updated
    assert '"city":"Washington"' in listed and "/crm/v3/objects/contacts/batch/upsert" in listed
    assert '"status":"dead"' in dead and "HubSpot answered 400 VALIDATION_ERROR" in dead
    assert deleted.strip() == "204"
    assert "OBJECT_NOT_FOUND" in gone
