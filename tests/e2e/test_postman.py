"""The Postman collection in docs/ (the README's walk-through), run by newman against both
apps as real processes. newman (npm) is installed into .venv/node when missing."""

import json
import shutil
import subprocess
from pathlib import Path

import pytest
from live_pair import live_pair

ROOT = Path(__file__).resolve().parents[2]
COLLECTION = ROOT / "docs" / "crm-sync.postman_collection.json"
NODE_PREFIX = ROOT / ".venv" / "node"
NEWMAN = NODE_PREFIX / "node_modules" / ".bin" / "newman"
KEY = "postman-test-key"


@pytest.fixture(scope="module")
def newman() -> Path:
    if not NEWMAN.exists():
        npm = shutil.which("npm")
        assert npm, "npm is needed to install newman (apt-get install npm)"
        subprocess.run(
            [npm, "install", "--prefix", str(NODE_PREFIX), "--no-audit", "--no-fund", "newman@6"],
            check=True,
            capture_output=True,
            timeout=600,
        )
    return NEWMAN


def test_the_postman_collection_passes_against_the_real_services(
    newman: Path, tmp_path: Path
) -> None:
    report = tmp_path / "newman.json"
    with live_pair(tmp_path, API_KEY=KEY) as pair:
        run = subprocess.run(
            [
                str(newman),
                "run",
                str(COLLECTION),
                "--env-var",
                f"baseUrl={pair.service_url}",
                "--env-var",
                f"crmUrl={pair.crm_url}",
                "--env-var",
                f"apiKey={KEY}",
                "--reporters",
                "cli,json",
                "--reporter-json-export",
                str(report),
                "--color",
                "off",
            ],
            capture_output=True,
            text=True,
            timeout=300,
        )
    assert run.returncode == 0, run.stdout[-8000:] + run.stderr[-2000:]
    stats = json.loads(report.read_text())["run"]["stats"]
    assert stats["assertions"]["failed"] == 0
    assert stats["assertions"]["total"] >= 80
    assert stats["requests"]["failed"] == 0
