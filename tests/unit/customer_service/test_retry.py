import asyncio
import random
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest

from customer_service.crm.throttle import CallThrottle
from customer_service.sync.retry import (
    JITTER,
    FailureVerdict,
    RetryPolicy,
    Urgency,
    backoff_seconds,
    is_exhausted,
    is_permanent,
    judge_failure,
    next_attempt_at,
    parse_retry_after,
)

NOW = datetime(2026, 11, 24, 10, 0, tzinfo=UTC)


@pytest.mark.parametrize("status", [400, 404, 410, 422])
def test_other_4xx_are_permanent(status: int) -> None:
    assert is_permanent(status)


@pytest.mark.parametrize("status", [401, 403])
def test_credentials_refused_hold_deliveries_instead_of_killing_requests(status: int) -> None:
    from customer_service.sync.hold import HoldKind, hold_kind

    assert not is_permanent(status)
    assert hold_kind(status) is HoldKind.CREDENTIALS


@pytest.mark.parametrize("status", [None, 408, 409, 425, 429, 500, 502, 503, 504])
def test_timeouts_throttling_and_5xx_are_transient(status: int | None) -> None:
    assert not is_permanent(status)


def test_backoff_doubles_within_jitter_and_is_capped() -> None:
    rand = random.Random(7)
    for attempts in range(1, 30):
        expected = min(3600.0, 2.0 ** (attempts - 1))
        delay = backoff_seconds(attempts, 1.0, 3600.0, rand)
        assert expected * (1 - JITTER) <= delay <= min(3600.0, expected * (1 + JITTER))


def test_jitter_spreads_delays() -> None:
    rand = random.Random(1)
    delays = {round(backoff_seconds(5, 1.0, 3600.0, rand), 6) for _ in range(20)}
    assert len(delays) > 10


def test_default_budget_spans_about_fourteen_hours() -> None:
    mean_total = sum(min(3600.0, 2.0 ** (n - 1)) for n in range(1, 25))
    assert 12 * 3600 < mean_total < 16 * 3600


def test_retry_after_seconds_and_http_date() -> None:
    assert parse_retry_after("120", NOW) == 120.0
    later = "Tue, 24 Nov 2026 10:05:00 GMT"
    assert parse_retry_after(later, NOW) == 300.0
    assert parse_retry_after("soon", NOW) is None
    assert parse_retry_after(None, NOW) is None


def test_retry_after_longer_than_backoff_wins() -> None:
    due = next_attempt_at(NOW, 1, 1.0, 3600.0, retry_after=120.0)
    assert due == NOW + timedelta(seconds=120)


def test_backoff_longer_than_retry_after_wins() -> None:
    due = next_attempt_at(NOW, 10, 1.0, 3600.0, retry_after=1.0, rand=random.Random(3))
    assert due > NOW + timedelta(seconds=400)


def test_exhausted_at_max_attempts() -> None:
    assert not is_exhausted(24, 25)
    assert is_exhausted(25, 25)


POLICY = RetryPolicy(base=1.0, maximum=3600.0, max_attempts=5)


def _judge(**overrides: Any) -> FailureVerdict:
    values: dict[str, Any] = {
        "policy": POLICY,
        "attempts": 2,
        "status": 503,
        "retry_after": None,
        "now": NOW,
        "scheduled": NOW - timedelta(seconds=1),
        "urgency": Urgency.DUE,
        "rand": random.Random(5),
    }
    values.update(overrides)
    return judge_failure(**values)


def test_due_transient_failure_counts_and_backs_off() -> None:
    verdict = _judge()
    assert verdict.attempts == 3 and not verdict.dead
    assert NOW + timedelta(seconds=3.2) <= verdict.next_attempt_at <= NOW + timedelta(seconds=4.8)


def test_permanent_failure_is_dead_at_once_whatever_the_urgency() -> None:
    for urgency in Urgency:
        assert _judge(status=422, urgency=urgency).dead


def test_last_attempt_makes_the_request_dead() -> None:
    assert _judge(attempts=4).dead
    assert not _judge(attempts=3).dead


def test_recovery_pass_failure_of_a_request_not_yet_due_costs_nothing() -> None:
    scheduled = NOW + timedelta(minutes=10)
    verdict = _judge(attempts=4, urgency=Urgency.RECOVERY, scheduled=scheduled)
    assert verdict == FailureVerdict(attempts=4, dead=False, next_attempt_at=scheduled)


def test_recovery_pass_keeps_retry_after_when_it_is_later() -> None:
    scheduled = NOW + timedelta(seconds=10)
    verdict = _judge(urgency=Urgency.RECOVERY, scheduled=scheduled, retry_after=60.0)
    assert verdict.next_attempt_at == NOW + timedelta(seconds=60)


def test_operator_retry_of_a_request_not_yet_due_counts() -> None:
    verdict = _judge(attempts=4, urgency=Urgency.OPERATOR, scheduled=NOW + timedelta(hours=1))
    assert verdict.attempts == 5 and verdict.dead


def test_only_failures_of_the_whole_crm_open_the_breaker() -> None:
    from customer_service.sync.retry import is_crm_wide

    assert all(is_crm_wide(s) for s in (None, 401, 403, 408, 429, 502, 503, 504))
    assert not any(is_crm_wide(s) for s in (400, 404, 409, 422, 500))


def test_a_429_pauses_for_its_retry_after_or_a_second() -> None:
    from customer_service.crm.throttle import pause_seconds

    now = datetime(2026, 11, 25, 10, 0, 0, tzinfo=UTC)
    assert pause_seconds("3", now) == 3.0
    assert pause_seconds(None, now) == 1.0
    assert pause_seconds("soon", now) == 1.0
    assert pause_seconds("Wed, 25 Nov 2026 10:00:05 GMT", now) == 5.0


async def test_a_pause_longer_than_the_callers_patience_fails_the_call_at_once() -> None:
    from customer_service.crm.throttle import CallThrottle, CrmPaused

    throttle = CallThrottle()
    throttle.answered(429, "3600")
    with pytest.raises(CrmPaused):
        await throttle.wait_turn(patience=2.0)
    assert throttle.paused
    await CallThrottle().wait_turn(patience=2.0)  # no pause: goes at once


def test_a_429_teaches_a_pace_under_what_the_crm_accepted() -> None:
    from customer_service.crm.throttle import learned_rate

    assert learned_rate(10, None) == 9.5
    assert learned_rate(10, 8.0) == 7.6  # still too fast at the learnt pace: slower
    assert learned_rate(0, None) == 1.0  # never stops calling


def test_a_learnt_pace_grows_without_429s_and_is_dropped_when_large() -> None:
    from customer_service.crm.throttle import GROWTH_SECONDS, grown_rate

    assert grown_rate(10.0, GROWTH_SECONDS / 2) == 10.0
    assert grown_rate(10.0, 2 * GROWTH_SECONDS) == pytest.approx(10.0 * 1.05**2)
    assert grown_rate(10.0, 1000 * GROWTH_SECONDS) is None


async def test_calls_taken_up_in_the_second_after_they_left_count_in_it() -> None:
    """A drain's first calls leave together at the end of a second and a busy CRM takes
    them up (and answers them) in the next, with the calls that left in it: the CRM's
    full second is learnt, not the two parts the departures split it into."""
    from customer_service.crm.throttle import CallThrottle

    wall = [1000.95]
    throttle = CallThrottle(clock=lambda: wall[0])
    sent_early = [await throttle.wait_turn(patience=2.0) for _ in range(14)]
    wall[0] = 1001.2
    for sent in sent_early:
        throttle.answered(201, None, sent)
    for _ in range(6):
        throttle.answered(201, None, await throttle.wait_turn(patience=2.0))
    throttle.answered(429, "0")
    assert throttle.pace == 19.0  # 0.95 of the 20 the CRM took up in second 1001


def _taught_38_a_second() -> tuple[CallThrottle, list[float]]:
    """A throttle on a wall clock the test moves, taught 38 calls a second by a 429 after
    40 accepted calls in one second."""
    wall = [1000.5]
    throttle = CallThrottle(clock=lambda: wall[0])
    for _ in range(40):
        throttle.answered(201, None)
    throttle.answered(429, "0")
    assert throttle.pace == 38.0
    return throttle, wall


async def test_a_second_429_learns_from_the_calls_made_at_the_learnt_pace(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """A pace learnt too fast (a burst's answers counted in one second too many) is
    corrected by the next 429 from the seconds paced since, not from the old count."""
    from customer_service.crm import throttle as throttle_module

    monkeypatch.setattr(throttle_module, "SETTLING_SECONDS", 0.0)
    throttle, wall = _taught_38_a_second()
    wall[0] = 1001.5
    for _ in range(30):
        throttle.answered(201, None)
    throttle.answered(429, "0")
    assert throttle.pace == 28.5  # 0.95 of 30, not of the 40 counted before the lesson


async def test_a_429_just_after_a_growth_is_learnt(monkeypatch: pytest.MonkeyPatch) -> None:
    """The 429s just after a lesson answer calls sent before it and teach nothing; just
    after a growth they say the grown pace is too fast, and are learnt at once (ignored,
    each growth that overshot cost two pauses instead of one)."""
    from customer_service.crm import throttle as throttle_module

    monkeypatch.setattr(throttle_module, "SETTLING_SECONDS", 0.1)
    monkeypatch.setattr(throttle_module, "GROWTH_SECONDS", 0.2)
    throttle, wall = _taught_38_a_second()
    await asyncio.sleep(0.25)  # past a growth interval: the next call grows the pace
    wall[0] = 1001.5
    await throttle.wait_turn(patience=2.0)
    assert throttle.pace == pytest.approx(38.0 * 1.05)
    for _ in range(30):
        throttle.answered(201, None)
    throttle.answered(429, "0")
    assert throttle.pace == 28.5


async def test_the_throttle_paces_calls_at_the_pace_a_429_taught() -> None:
    from customer_service.crm.throttle import CallThrottle

    wall = [1000.2]
    throttle = CallThrottle(clock=lambda: wall[0])
    for _ in range(20):
        throttle.answered(201, None)
    wall[0] = 1001.1  # the 429 comes early in the next second: its busiest is learnt
    for _ in range(3):
        throttle.answered(201, None)
    assert throttle.pace is None
    throttle.answered(429, "0")
    assert throttle.pace == 19.0  # 0.95 of the 20 accepted in one second
    throttle.answered(429, "0")  # a call in flight before the lesson: nothing more learnt
    assert throttle.pace == 19.0
    loop = asyncio.get_running_loop()
    start = loop.time()
    for _ in range(5):
        await throttle.wait_turn(patience=2.0)
    assert loop.time() - start >= 4 / 19.0 - 0.01  # evenly spaced, not at once


async def test_until_the_crm_has_stated_its_limit_one_call_goes_alone() -> None:
    from customer_service.crm.throttle import CallThrottle

    throttle = CallThrottle()
    throttle.wait_for_first_answer()
    await throttle.wait_turn(patience=2.0)  # the first call goes at once
    second = asyncio.create_task(throttle.wait_turn(patience=2.0))
    await asyncio.sleep(0.05)
    assert not second.done(), "a second call left before the first was answered"
    throttle.advertised(10, 9, 1.0)  # the first answer states the limit
    await asyncio.wait_for(second, 1.0)
    assert throttle.pace == 9.5
