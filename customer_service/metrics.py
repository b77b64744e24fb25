"""Prometheus metrics of one app, in a registry of its own (tests make many apps in one
process; the default global registry would refuse the second).

What an on-call person alerts on (sample rules in `docs/alerts.yml`):
- `crm_sync_deliveries_total{outcome}`: delivery attempts by outcome (delivered,
  transient_failure, permanent_failure);
- `crm_sync_crm_request_duration_seconds{method,outcome}`: each CRM call's latency;
- `crm_sync_lag_seconds`: from the commit of a change to the CRM's acknowledgment of it;
- `crm_sync_failed_requests{status}` and `crm_sync_oldest_undelivered_age_seconds`: the
  outbox, read from the database at each scrape;
- `crm_sync_kafka_unconfirmed_events` and `crm_sync_kafka_oldest_unconfirmed_age_seconds`:
  Kafka mode's versions published and not yet confirmed by the CRM (`sync.unconfirmed`),
  read at each scrape; not in `crm_sync_failed_requests` (nothing failed);
- `crm_sync_crm_up`: 0 while the CRM's last answer was none, a 5xx or a 429;
- `crm_sync_deliveries_held{reason}`: 1 for the reason deliveries are held now
  (`sync.hold`: unreachable, certificate, credentials, rate_limited, crm_error), else 0;
- `crm_sync_reconciliation_drift{kind}` and the `..._total` counters: what the last
  reconciliation found, and what all of them found and queued fixes for.
"""

import time
from collections.abc import Callable
from dataclasses import dataclass

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest

from customer_service.columns import utc_now
from customer_service.reconciliation.compare import DriftKind
from customer_service.reconciliation.schemas import ReconciliationReport
from customer_service.sync.hold import HoldKind, HoldReason
from customer_service.sync.models import OutboxRow, RequestStatus
from customer_service.sync.outcome import Delivered, Outcome
from customer_service.sync.retry import is_permanent

# Latencies on loopback are milliseconds; a slow CRM takes seconds (up to its timeout).
LATENCY_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10)
LAG_BUCKETS = (0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 5, 30, 60, 300, 3600, 14400, 86400)


@dataclass(frozen=True)
class LagSummary:
    """For the dashboard: the last sync lag seen, the mean, and how many were seen."""

    last: float | None
    mean: float | None
    count: int


class Metrics:
    """Every metric of the customer service, registered in `self.registry`."""

    def __init__(self) -> None:
        self._last_lag: float | None = None
        # Whether the CRM's last answer showed it working (None: not called yet).
        self.crm_answering: bool | None = None
        self.registry = CollectorRegistry(auto_describe=True)
        r = self.registry
        self.deliveries = Counter(
            "crm_sync_deliveries",
            "CRM delivery attempts by outcome.",
            ["outcome"],
            registry=r,
        )
        self.crm_latency = Histogram(
            "crm_sync_crm_request_duration_seconds",
            "Latency of each call to the CRM, by method and outcome (ok, error, unreachable).",
            ["method", "outcome"],
            buckets=LATENCY_BUCKETS,
            registry=r,
        )
        self.lag = Histogram(
            "crm_sync_lag_seconds",
            "From the commit of a change to the CRM's acknowledgment of it.",
            buckets=LAG_BUCKETS,
            registry=r,
        )
        self.undelivered = Gauge(
            "crm_sync_failed_requests",
            "Undelivered CRM requests by status.",
            ["status"],
            registry=r,
        )
        self.oldest_age = Gauge(
            "crm_sync_oldest_undelivered_age_seconds",
            "Age of the oldest undelivered CRM request (0 when there is none).",
            registry=r,
        )
        self.unconfirmed = Gauge(
            "crm_sync_kafka_unconfirmed_events",
            "Kafka mode: versions the broker took that the CRM has not reported applied or"
            " dead yet (published again after KAFKA_CONFIRM_SECONDS).",
            registry=r,
        )
        self.oldest_unconfirmed_age = Gauge(
            "crm_sync_kafka_oldest_unconfirmed_age_seconds",
            "Kafka mode: age of the oldest change awaiting the CRM's confirmation (0: none).",
            registry=r,
        )
        self.in_flight = Gauge(
            "crm_sync_deliveries_in_flight",
            "Customers being delivered right after a write.",
            registry=r,
        )
        self.crm_up = Gauge(
            "crm_sync_crm_up",
            "0 while the CRM's last answer to this replica was none, a 5xx or a 429.",
            registry=r,
        )
        self.crm_suspect = Gauge(
            "crm_sync_crm_suspect", "1 while this replica sees the CRM failing.", registry=r
        )
        self.held = Gauge(
            "crm_sync_deliveries_held",
            "1 for the reason this replica's deliveries are held now, 0 for the others.",
            ["reason"],
            registry=r,
        )
        self.drift = Gauge(
            "crm_sync_reconciliation_drift",
            "Drift found by the last reconciliation, by kind.",
            ["kind"],
            registry=r,
        )
        self.drift_found = Counter(
            "crm_sync_reconciliation_drift_found",
            "Drift found by reconciliations, by kind.",
            ["kind"],
            registry=r,
        )
        self.fixes_queued = Counter(
            "crm_sync_reconciliation_fixes_queued",
            "Fixes queued in failed_requests by reconciliations, by kind of drift.",
            ["kind"],
            registry=r,
        )
        self.last_reconciliation = Gauge(
            "crm_sync_reconciliation_last_run_timestamp_seconds",
            "When the last reconciliation finished (Unix time; 0: none yet).",
            registry=r,
        )
        for outcome in ("delivered", "transient_failure", "permanent_failure"):
            self.deliveries.labels(outcome)
        for reason in HoldKind:
            self.held.labels(reason.value)
        for kind in DriftKind:
            self.drift.labels(kind.value)
            self.drift_found.labels(kind.value)
            self.fixes_queued.labels(kind.value)

    def observe_crm_call(self, method: str, status: int | None, seconds: float) -> None:
        outcome = "unreachable" if status is None else "ok" if 200 <= status < 300 else "error"
        self.crm_latency.labels(method, outcome).observe(seconds)
        # A refusal (4xx) is the CRM working; no answer, a 5xx or a 429 is an outage.
        self.crm_answering = status is not None and status < 500 and status != 429

    @property
    def crm_failing(self) -> bool:
        return self.crm_answering is False

    def observe_delivery(self, row: OutboxRow, outcome: Outcome) -> None:
        if isinstance(outcome, Delivered):
            self.deliveries.labels("delivered").inc()
            lag = max(0.0, (utc_now() - row.created_at).total_seconds())
            self.lag.observe(lag)
            self._last_lag = lag
        elif is_permanent(outcome.status):
            self.deliveries.labels("permanent_failure").inc()
        else:
            self.deliveries.labels("transient_failure").inc()

    def observe_reconciliation(self, report: ReconciliationReport) -> None:
        found = {
            DriftKind.MISSING: len(report.missing),
            DriftKind.EXTRA: len(report.extra),
            DriftKind.DIFFERENT: len(report.different),
        }
        for kind, count in found.items():
            self.drift.labels(kind.value).set(count)
            self.drift_found.labels(kind.value).inc(count)
        for kind_name, count in report.queued_by_kind.items():
            self.fixes_queued.labels(kind_name).inc(count)
        self.last_reconciliation.set(report.finished_at.timestamp())

    def set_outbox(self, counts: dict[str, int], oldest_age: float) -> None:
        for status in RequestStatus:
            self.undelivered.labels(status.value).set(counts.get(status.value, 0))
        self.oldest_age.set(oldest_age)

    def set_unconfirmed(self, count: int, oldest_age: float) -> None:
        self.unconfirmed.set(count)
        self.oldest_unconfirmed_age.set(oldest_age)

    def set_process(self, in_flight: int, crm_suspect: bool, held: HoldReason | None) -> None:
        self.in_flight.set(in_flight)
        self.crm_up.set(0 if self.crm_failing else 1)
        self.crm_suspect.set(1 if crm_suspect else 0)
        for reason in HoldKind:
            self.held.labels(reason.value).set(1 if held is not None and held.kind == reason else 0)

    def lag_summary(self) -> LagSummary:
        count = int(self.registry.get_sample_value("crm_sync_lag_seconds_count") or 0)
        total = self.registry.get_sample_value("crm_sync_lag_seconds_sum") or 0.0
        return LagSummary(self._last_lag, total / count if count else None, count)

    def render(self) -> bytes:
        return generate_latest(self.registry)


def timer() -> Callable[[], float]:
    """Seconds since this call, when the returned function is called."""
    start = time.perf_counter()
    return lambda: time.perf_counter() - start
