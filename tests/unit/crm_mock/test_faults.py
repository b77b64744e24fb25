"""The pure fault logic: when a call fails, and how a partial update merges."""

import pytest
from pydantic import ValidationError

from crm_mock.faults import (
    FaultSettings,
    FaultUpdate,
    InjectedFault,
    apply_fault_update,
    decide_fault,
)


def test_healthy_settings_never_fault() -> None:
    settings = FaultSettings()

    assert [decide_fault(settings, draw) for draw in (0.0, 0.5, 0.999999)] == [None] * 3


def test_down_faults_every_call_whatever_the_draw() -> None:
    settings = FaultSettings(down=True, status_code=502, retry_after_seconds=12)

    decisions = {decide_fault(settings, draw) for draw in (0.0, 0.5, 0.999999)}

    assert decisions == {InjectedFault(502, 12, "the CRM is down")}


@pytest.mark.parametrize(
    ("error_rate", "draw", "faulted"),
    [
        (0.0, 0.0, False),
        (0.25, 0.0, True),
        (0.25, 0.2499, True),
        (0.25, 0.25, False),
        (0.25, 0.9, False),
        (1.0, 0.999999, True),
    ],
)
def test_error_rate_fails_the_draws_below_it(error_rate: float, draw: float, faulted: bool) -> None:
    settings = FaultSettings(error_rate=error_rate, status_code=500)

    decision = decide_fault(settings, draw)

    assert (decision is not None) == faulted
    if decision is not None:
        assert decision == InjectedFault(500, None, "a random failure")


def test_defaults_match_the_spec() -> None:
    assert FaultSettings().model_dump(by_alias=True) == {
        "down": False,
        "errorRate": 0.0,
        "statusCode": 503,
        "latencyMs": 0,
        "retryAfterSeconds": None,
        "rateLimitPerSecond": None,
    }


def test_update_changes_only_the_fields_it_sets() -> None:
    current = FaultSettings(error_rate=0.5, latency_ms=100, retry_after_seconds=3)

    merged = apply_fault_update(current, FaultUpdate.model_validate({"down": True}))

    assert merged == FaultSettings(down=True, error_rate=0.5, latency_ms=100, retry_after_seconds=3)
    assert current.down is False  # the current settings are not touched


def test_update_with_explicit_null_clears_retry_after() -> None:
    current = FaultSettings(retry_after_seconds=3)

    merged = apply_fault_update(current, FaultUpdate.model_validate({"retryAfterSeconds": None}))

    assert merged.retry_after_seconds is None


def test_empty_update_changes_nothing() -> None:
    current = FaultSettings(down=True, status_code=429)

    assert apply_fault_update(current, FaultUpdate.model_validate({})) == current


@pytest.mark.parametrize(
    "body",
    [
        {"errorRate": 1.01},
        {"errorRate": -0.01},
        {"statusCode": 399},
        {"statusCode": 600},
        {"latencyMs": -1},
        {"latencyMs": 600_001},
        {"retryAfterSeconds": -1},
        {"retryAfterSeconds": 1.5},
        {"down": None},
        {"errorRate": None},
        {"statusCode": None},
        {"latencyMs": None},
        {"unknown": 1},
    ],
)
def test_update_refuses_out_of_range_values(body: dict[str, object]) -> None:
    with pytest.raises(ValidationError):
        FaultUpdate.model_validate(body)


@pytest.mark.parametrize(
    "body",
    [
        {"errorRate": 0.0},
        {"errorRate": 1.0},
        {"statusCode": 400},
        {"statusCode": 599},
        {"latencyMs": 0},
        {"latencyMs": 600_000},
        {"retryAfterSeconds": 0},
    ],
)
def test_update_accepts_the_bounds(body: dict[str, object]) -> None:
    update = FaultUpdate.model_validate(body)

    merged = apply_fault_update(FaultSettings(), update)

    assert merged.model_dump(by_alias=True).items() >= body.items()


def test_settings_are_frozen() -> None:
    settings = FaultSettings()

    with pytest.raises(ValidationError):
        settings.down = True  # type: ignore[misc]


def test_rate_window_admits_the_limit_per_wall_clock_second() -> None:
    from crm_mock.faults import RateWindow

    window = RateWindow()
    assert [window.admit(100.1, 3) for _ in range(5)] == [True, True, True, False, False]
    assert window.admit(100.99, 3) is False
    assert window.admit(101.0, 3) is True  # a new second
    assert all(window.admit(101.5, None) for _ in range(100))  # no limit


def test_daily_window_counts_a_day_under_one_limit_and_reports_none_used_past_it() -> None:
    from crm_mock.gateway import DailyWindow

    day = 86_400.0
    window = DailyWindow()
    assert [window.admit(10 * day + 5, 2) for _ in range(3)] == [True, True, False]
    assert window.used(10 * day + 60, 2) == 2
    # The next UTC day, or another limit: nothing used yet, before any call counts.
    assert window.used(11 * day + 1, 2) == 0
    assert window.used(10 * day + 60, 5) == 0
    assert window.admit(11 * day + 1, 2) is True
    assert window.used(11 * day + 2, 2) == 1
