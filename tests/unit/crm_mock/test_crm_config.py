"""CRM mock settings: defaults, environment names, and one clear line for a bad value."""

from pathlib import Path

import pytest
from pydantic import ValidationError

from crm_mock.config import CrmSettings, LogFormat, describe_settings_error

VARIABLES = (
    "HOST",
    "PORT",
    "CRM_DATABASE_URL",
    "CRM_API_TOKEN",
    "KAFKA_BOOTSTRAP_SERVERS",
    "KAFKA_TOPIC",
    "KAFKA_GROUP_ID",
    "LOG_FORMAT",
)


@pytest.fixture(autouse=True)
def clean_environment(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    for name in VARIABLES:
        monkeypatch.delenv(name, raising=False)
    monkeypatch.chdir(tmp_path)  # no stray .env


def settings_error(**environment: str) -> str:
    with pytest.MonkeyPatch.context() as patch:
        for name, value in environment.items():
            patch.setenv(name, value)
        with pytest.raises(ValidationError) as caught:
            CrmSettings()
    return describe_settings_error(caught.value)


def test_defaults_match_the_spec() -> None:
    settings = CrmSettings()

    assert settings.host == "127.0.0.1"
    assert settings.port == 8081
    assert settings.crm_database_url == "sqlite+aiosqlite:///./crm_mock.db"
    assert settings.crm_api_token == ""
    assert settings.kafka_bootstrap_servers == "127.0.0.1:9092"
    assert settings.kafka_topic == "customer-events"
    assert settings.kafka_group_id == "crm-mock"
    assert settings.log_format is LogFormat.TEXT


def test_reads_the_environment_and_a_dotenv_file(monkeypatch: pytest.MonkeyPatch) -> None:
    Path(".env").write_text("CRM_API_TOKEN=from-dotenv\nPORT=9000\nOTHER_SERVICE_SETTING=x\n")
    monkeypatch.setenv("PORT", "18081")
    monkeypatch.setenv("LOG_FORMAT", "json")
    monkeypatch.setenv("CRM_DATABASE_URL", "postgresql+asyncpg://crm@db/crm")

    settings = CrmSettings()

    assert settings.crm_api_token == "from-dotenv"
    assert settings.port == 18081  # the environment wins over .env
    assert settings.log_format is LogFormat.JSON
    assert settings.crm_database_url == "postgresql+asyncpg://crm@db/crm"


@pytest.mark.parametrize(
    ("environment", "expected"),
    [
        ({"PORT": "70000"}, "invalid setting PORT: Input should be less than or equal to 65535"),
        ({"PORT": "0"}, "invalid setting PORT: Input should be greater than or equal to 1"),
        ({"PORT": "http"}, "invalid setting PORT: Input should be a valid integer"),
        ({"LOG_FORMAT": "xml"}, "invalid setting LOG_FORMAT: Input should be 'text' or 'json'"),
    ],
)
def test_bad_value_is_described_in_one_line_naming_the_variable(
    environment: dict[str, str], expected: str
) -> None:
    description = settings_error(**environment)

    assert description.startswith(expected)
    assert "\n" not in description


@pytest.mark.parametrize("url", ["not a url", "mysql://crm@db/crm", "sqlite:///./crm.db"])
def test_database_url_needs_a_supported_async_driver(url: str) -> None:
    description = settings_error(CRM_DATABASE_URL=url)

    assert description.startswith("invalid setting CRM_DATABASE_URL: Value error,")
