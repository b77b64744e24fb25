"""Settings of the customer service, read from the environment and `.env`."""

import json
import ssl
from enum import StrEnum
from typing import Annotated

from pydantic import AfterValidator, Field, ValidationError, model_validator
from pydantic_settings import BaseSettings, SettingsConfigDict
from sqlalchemy import make_url
from sqlalchemy.exc import ArgumentError


class SyncMode(StrEnum):
    HTTP = "http"
    KAFKA = "kafka"


class CrmConnector(StrEnum):
    MOCK = "mock"
    HUBSPOT = "hubspot"
    SALESFORCE = "salesforce"


# Records per CRM call: each connector's default and the most its CRM takes.
BATCH_SIZES: dict[CrmConnector, tuple[int, int]] = {
    CrmConnector.MOCK: (1, 100),
    CrmConnector.HUBSPOT: (100, 100),
    CrmConnector.SALESFORCE: (200, 200),
}


class LogFormat(StrEnum):
    TEXT = "text"
    JSON = "json"


PositiveSeconds = Annotated[float, Field(gt=0)]


SUPPORTED_DATABASES = ("sqlite+aiosqlite", "postgresql+asyncpg")


def _check_database_url(value: str) -> str:
    try:
        driver = make_url(value).drivername
    except ArgumentError:
        raise ValueError("not a database URL") from None
    if driver not in SUPPORTED_DATABASES:
        raise ValueError(f"use one of {', '.join(d + '://' for d in SUPPORTED_DATABASES)}")
    return value


def _check_ca_bundle(value: str) -> str:
    if value:
        from customer_service.crm.tls import load_ca_bundle

        load_ca_bundle(ssl.create_default_context(), value)  # raises ValueError, one line
    return value


CUSTOMER_FIELDS = (
    "id",
    "firstName",
    "lastName",
    "email",
    "phone",
    "address.street",
    "address.city",
    "address.state",
    "address.postalCode",
    "address.country",
)


def load_field_map(path: str) -> dict[str, str]:
    """The `CRM_FIELD_MAP` file: customer field -> CRM field; ValueError in one line."""
    try:
        with open(path, encoding="utf-8") as file:
            found = json.load(file)
    except OSError as exc:
        raise ValueError(f"cannot read {path}: {exc.strerror or exc}") from None
    except ValueError:
        raise ValueError(f"{path} is not JSON") from None
    if not isinstance(found, dict) or not all(
        isinstance(k, str) and isinstance(v, str) and v for k, v in found.items()
    ):
        raise ValueError(f'{path} must be one object {{"<customer field>": "<CRM field>"}}')
    unknown = sorted(set(found) - set(CUSTOMER_FIELDS))
    if unknown:
        raise ValueError(f"{path} names unknown customer fields: {', '.join(unknown)}")
    targets = list(found.values())
    twice = sorted({field for field in targets if targets.count(field) > 1})
    if twice:
        raise ValueError(f"{path} maps two customer fields to {', '.join(twice)}")
    return dict(found)


def _check_field_map(value: str) -> str:
    if value:
        load_field_map(value)
    return value


class Settings(BaseSettings):
    """Every knob of the README's Settings; a bad value stops start-up (see `describe_error`)."""

    model_config = SettingsConfigDict(env_file=".env", extra="ignore", case_sensitive=False)

    database_url: Annotated[str, AfterValidator(_check_database_url)] = (
        "sqlite+aiosqlite:///./customer_service.db"
    )
    host: str = "127.0.0.1"
    port: int = Field(default=8080, ge=1, le=65535)
    crm_base_url: str = Field(default="http://127.0.0.1:8081", pattern=r"^https?://")
    crm_api_token: str = Field(default="", repr=False)
    crm_timeout_seconds: PositiveSeconds = 2.0
    # A PEM file of CAs trusted for the CRM besides the system's (`crm.tls`).
    crm_ca_bundle: Annotated[str, AfterValidator(_check_ca_bundle)] = ""
    sync_mode: SyncMode = SyncMode.HTTP
    # Which CRM the service speaks to (`sync.connector`).
    crm_connector: CrmConnector = CrmConnector.MOCK
    # Records per CRM call where the connector has a batch API; unset: the connector's
    # default (the CRM mock: 1, the seed's one call per change), never above its maximum.
    crm_batch_size: int | None = Field(default=None, ge=1, le=1000)
    # A JSON file {"<customer field>": "<CRM field>"} overriding the connector's mapping.
    crm_field_map: Annotated[str, AfterValidator(_check_field_map)] = ""
    # HubSpot (CRM_CONNECTOR=hubspot): a private app's token, never logged or shown.
    hubspot_access_token: str = Field(default="", repr=False)
    hubspot_base_url: str = Field(default="https://api.hubapi.com", pattern=r"^https?://")
    hubspot_id_property: str = Field(default="crm_sync_id", min_length=1)
    # Salesforce (CRM_CONNECTOR=salesforce): an external client app's client credentials;
    # the secret (and the access token it gets) never logged or shown.
    salesforce_login_url: str = Field(default="https://login.salesforce.com", pattern=r"^https?://")
    salesforce_client_id: str = ""
    salesforce_client_secret: str = Field(default="", repr=False)
    salesforce_api_version: str = Field(default="62.0", pattern=r"^\d{2,3}\.\d$")
    salesforce_external_id_field: str = Field(
        default="Crm_Sync_Id__c", pattern=r"^[A-Za-z][A-Za-z0-9_]*$"
    )
    retry_interval_seconds: PositiveSeconds = 60.0
    retry_concurrency: int = Field(default=16, ge=1, le=1000)
    retry_max_attempts: int = Field(default=25, ge=1)
    retry_backoff_base_seconds: PositiveSeconds = 1.0
    retry_backoff_max_seconds: PositiveSeconds = 3600.0
    # A ceiling on this process's calls to the CRM (0: none); a 429 pauses them all too.
    crm_max_requests_per_second: float = Field(default=0.0, ge=0, le=100_000)
    kafka_bootstrap_servers: str = "127.0.0.1:9092"
    kafka_topic: str = Field(default="customer-events", min_length=1)
    kafka_status_topic: str = Field(default="customer-events.status", min_length=1)
    kafka_partitions: int = Field(default=4, ge=1, le=1000)
    # Tansu refuses InitProducerId; nothing relies on it, the CRM's consumer drops duplicates.
    kafka_idempotent_producer: bool = True
    # A version the broker took and the CRM has not reported applied or dead within this
    # is published again, same eventId (`sync.republisher`).
    kafka_confirm_seconds: PositiveSeconds = 60.0
    # Not in the first contract: the status reader's group session. A joining member waits up to
    # this (Tansu: half of it) before it reads; Apache Kafka accepts 6 s and more by default.
    kafka_session_timeout_seconds: float = Field(default=10.0, ge=1.0, le=3600.0)
    # `customer-service sink` (README, "Kafka sink"): its consumer group (every sink process
    # of one group shares the partitions) and where it puts what the CRM refuses for good.
    kafka_sink_group_id: str = Field(default="customer-service-sink", min_length=1)
    kafka_dlq_topic: str = Field(default="customer-events.dlq", min_length=1)
    # Reconcile with the CRM (and repair the drift) this often; 0 switches it off.
    reconcile_interval_seconds: float = Field(default=0.0, ge=0)
    api_key: str = Field(default="", repr=False)
    log_format: LogFormat = LogFormat.TEXT
    # Not in the first contract: false makes an API-only process. Writes still record their CRM
    # requests (nothing is lost); this process just never delivers them (other replicas
    # do, or this one once it is switched back on). The benchmark's "sync off" baseline.
    sync_enabled: bool = True
    # Not in the first contract: how often a replica probes a CRM it saw failing, so that a
    # backlog starts draining within seconds of the CRM's return (guarantee 7).
    recovery_probe_seconds: PositiveSeconds = 1.0
    # How long a replica's claim on one customer's requests lasts unless renewed; a live
    # replica renews it every third of that while it delivers, so this bounds how long the
    # customers of a crashed replica wait before another takes them over (guarantee 6).
    claim_lease_seconds: PositiveSeconds = 10.0
    # Database capacity (PostgreSQL; SQLite always uses one connection). Each process
    # opens at most pool + overflow connections, so replicas x (pool + overflow) must
    # stay within the server's max_connections (README, "Database capacity").
    database_pool_size: int = Field(default=10, ge=1, le=1000)
    database_max_overflow: int = Field(default=5, ge=0, le=1000)
    # How long an API call waits for a free connection before it answers 503.
    database_pool_timeout_seconds: PositiveSeconds = 5.0
    # Connections of the background delivery machinery, a pool of its own (`db.engines_for`);
    # 0 means half the pool (pool + overflow) rounded down, at least 1. The rest are the API's.
    sync_database_connections: int = Field(default=0, ge=0, le=1000)

    @model_validator(mode="after")
    def _connector_ready(self) -> "Settings":
        if self.crm_connector == CrmConnector.HUBSPOT and not self.hubspot_access_token:
            raise ValueError("CRM_CONNECTOR=hubspot needs HUBSPOT_ACCESS_TOKEN")
        if self.crm_connector == CrmConnector.SALESFORCE and not (
            self.salesforce_client_id and self.salesforce_client_secret
        ):
            raise ValueError(
                "CRM_CONNECTOR=salesforce needs SALESFORCE_CLIENT_ID and SALESFORCE_CLIENT_SECRET"
            )
        default, most = BATCH_SIZES[self.crm_connector]
        if self.crm_batch_size is None:
            self.crm_batch_size = default
        elif self.crm_batch_size > most:
            raise ValueError(
                f"CRM_BATCH_SIZE must be at most {most} for CRM_CONNECTOR={self.crm_connector}"
            )
        return self

    @model_validator(mode="after")
    def _sync_share_within_pool(self) -> "Settings":
        total = self.database_pool_size + self.database_max_overflow
        if self.sync_database_connections == 0:
            self.sync_database_connections = max(1, total // 2)
        elif self.sync_database_connections >= total:
            raise ValueError(
                "SYNC_DATABASE_CONNECTIONS must be below DATABASE_POOL_SIZE +"
                " DATABASE_MAX_OVERFLOW, so the API always has a connection"
            )
        return self


def describe_error(error: ValidationError) -> str:
    """One clear line naming the first bad variable, for a start-up failure."""
    first = error.errors()[0]
    message = first["msg"].removeprefix("Value error, ")
    if not first["loc"]:  # a rule across several variables names them itself
        return f"invalid settings: {message}"
    return f"invalid setting {str(first['loc'][0]).upper()}: {message}"
