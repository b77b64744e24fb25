"""Settings of the CRM mock, read from the environment and a `.env` file in the working folder."""

from enum import StrEnum

from pydantic import Field, ValidationError, field_validator
from pydantic_settings import BaseSettings, SettingsConfigDict
from sqlalchemy.engine import make_url
from sqlalchemy.exc import ArgumentError

# The async drivers the store is written and tested for.
SUPPORTED_DATABASE_DRIVERS = frozenset({"sqlite+aiosqlite", "postgresql+asyncpg"})


class LogFormat(StrEnum):
    TEXT = "text"
    JSON = "json"


class CrmSettings(BaseSettings):
    """The CRM mock's settings (README: Settings); a bad value stops start-up."""

    model_config = SettingsConfigDict(env_file=".env", extra="ignore", case_sensitive=False)

    host: str = Field(default="127.0.0.1", min_length=1)
    port: int = Field(default=8081, ge=1, le=65535)
    crm_database_url: str = "sqlite+aiosqlite:///./crm_mock.db"
    crm_api_token: str = ""
    kafka_bootstrap_servers: str = Field(default="127.0.0.1:9092", min_length=1)
    kafka_topic: str = Field(default="customer-events", min_length=1)
    kafka_group_id: str = Field(default="crm-mock", min_length=1)
    kafka_status_topic: str = Field(default="customer-events.status", min_length=1)
    kafka_dlq_topic: str = Field(default="customer-events.dlq", min_length=1)
    kafka_partitions: int = Field(default=4, ge=1, le=1000)
    kafka_idempotent_producer: bool = True
    # The consumer group's session: a killed consumer's partitions move to another after
    # it, and a joining member waits up to it (Tansu: half of it) before it reads. Apache
    # Kafka accepts 6 s and more by default.
    kafka_session_timeout_seconds: float = Field(default=10.0, ge=1.0, le=3600.0)
    # The consumer's retries of an apply that fails for a passing reason (the CRM is down),
    # with backoff from 0.1 s to 30 s (about 8 minutes in all); then the event is
    # dead-lettered. An event the CRM refuses for good is dead-lettered at once.
    kafka_max_attempts: int = Field(default=25, ge=1)
    log_format: LogFormat = LogFormat.TEXT

    @field_validator("crm_database_url")
    @classmethod
    def _check_database_url(cls, value: str) -> str:
        # Caught here so a typo is one clear line at start-up, not a traceback from the lifespan.
        try:
            driver = make_url(value).drivername
        except ArgumentError as error:
            raise ValueError(f"not a database URL: {value!r}") from error
        if driver not in SUPPORTED_DATABASE_DRIVERS:
            supported = " or ".join(f"{name}://" for name in sorted(SUPPORTED_DATABASE_DRIVERS))
            raise ValueError(f"unsupported driver {driver!r}, use {supported}")
        return value


def describe_settings_error(error: ValidationError) -> str:
    """One line naming the first bad variable, e.g. `invalid setting PORT: Input should be ...`."""
    first = error.errors()[0]
    variable = str(first["loc"][0]).upper() if first["loc"] else "settings"
    return f"invalid setting {variable}: {first['msg']}"
