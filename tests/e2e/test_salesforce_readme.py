"""The README's "Salesforce" walk-through, run verbatim against the pair as
`CRM_CONNECTOR=salesforce make run` starts it (the Makefile's defaults: the CRM mock as
SALESFORCE_LOGIN_URL, client credentials it accepts); only the ports differ."""

import os
import sys
from pathlib import Path

from support import free_port, loopback_client, settled
from test_readme import pair
from walkthrough import ROOT, run_blocks, section_blocks

BIN = Path(sys.executable).parent


def make_run_env(crm_port: int) -> dict[str, str]:
    """What `CRM_CONNECTOR=salesforce make run` gives the service (Makefile,
    SALESFORCE_RUN_ENV)."""
    makefile = (ROOT / "Makefile").read_text()
    assert "SALESFORCE_LOGIN_URL:-http://127.0.0.1:8081" in makefile
    assert "SALESFORCE_CLIENT_ID:-crm-sync-local" in makefile
    assert "CRM_API_TOKEN:-local-make-run" in makefile
    env = {k: v for k, v in os.environ.items() if not k.startswith(("SALESFORCE_", "CRM_"))}
    env.pop("DATABASE_URL", None)
    return {
        **env,
        "CRM_CONNECTOR": "salesforce",
        "SALESFORCE_LOGIN_URL": f"http://127.0.0.1:{crm_port}",
        "SALESFORCE_CLIENT_ID": "crm-sync-local",
        "SALESFORCE_CLIENT_SECRET": "local-make-run",
    }


async def test_the_salesforce_walkthrough_works_verbatim(tmp_path: Path) -> None:
    service_port, crm_port = free_port(), free_port()
    async with (
        pair(tmp_path, service_port, crm_port, make_run_env(crm_port)),
        loopback_client(f"http://127.0.0.1:{service_port}") as http,
    ):
        blocks = section_blocks("Salesforce", service_port, crm_port)
        outputs = await run_blocks(blocks, lambda: settled(http))
    assert len(outputs) == 8, outputs
    created, synced, updated, listed, _, dead, deleted, gone = outputs
    assert '"status":"pending"' in created
    assert '"status":"synced"' in synced and '"MailingCity":"Arlington"' in synced
    assert '"MailingPostalCode":"22202"' in synced
    assert '{"expired":1}' in updated and '"version":2' in updated
    assert '"MailingCity":"Washington"' in listed
    assert "/services/data/v62.0/composite/sobjects/Contact/Crm_Sync_Id__c" in listed
    assert '"status":401' in listed  # the expired token's answer, then the call again
    assert '"status":"dead"' in dead and "(INVALID_EMAIL_ADDRESS) [Email]" in dead
    assert deleted.strip() == "204"
    assert '"totalSize":0' in gone
