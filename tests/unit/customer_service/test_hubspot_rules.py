"""The pure parts of the HubSpot connector: the property mapping, what HubSpot's answers
say (rate headers, 429 policies, the daily reset, a 207's errors), redaction, and the
pace the `X-HubSpot-RateLimit-*` headers set on the throttle."""

import asyncio
from datetime import UTC, datetime

import pytest
from support import ADA_PAYLOAD

from customer_service.crm.hubspot_answers import (
    RateHeaders,
    daily_reset_seconds,
    describe,
    policy_of,
    record_errors,
    redact,
    results_by,
)
from customer_service.crm.hubspot_mapping import PropertyMap
from customer_service.crm.throttle import CallThrottle


def test_the_default_mapping_is_spec_4b_with_parts_apart_and_blanks_cleared() -> None:
    mapping = PropertyMap.of("crm_sync_id")

    assert mapping.to_properties(ADA_PAYLOAD) == {
        "firstname": "Ada",
        "lastname": "Lovelace",
        "email": "ada@example.com",
        "phone": "",
        "address": "12 St James's Square",
        "city": "London",
        "state": "",
        "zip": "SW1Y 4JH",
        "country": "GB",
        "crm_sync_id": "42",
    }


def test_crm_field_map_overrides_field_by_field_the_id_included() -> None:
    mapping = PropertyMap.of("crm_sync_id", {"address.postalCode": "postcode", "id": "shop_id"})

    properties = mapping.to_properties(ADA_PAYLOAD)

    assert properties["postcode"] == "SW1Y 4JH" and "zip" not in properties
    assert properties["shop_id"] == "42" and "crm_sync_id" not in properties
    assert mapping.id_property == "shop_id"
    assert properties["firstname"] == "Ada"


def test_a_legacy_payload_of_the_mock_record_still_maps() -> None:
    legacy = {"externalId": "7", "firstName": "A", "lastName": "B", "email": "a@b.co"}
    legacy["address"] = "1 Road, Town"

    properties = PropertyMap.of("crm_sync_id").to_properties(legacy)

    assert properties["crm_sync_id"] == "7" and properties["address"] == "1 Road, Town"


def test_a_contact_reads_back_as_a_neutral_record() -> None:
    mapping = PropertyMap.of("crm_sync_id")
    contact = {
        "id": "901",
        "properties": {**mapping.to_properties(ADA_PAYLOAD), "hs_object_id": "9"},
    }

    record = mapping.record(contact)

    assert record["id"] == "901" and record["externalId"] == "42"
    assert record["address.city"] == "London" and record["phone"] is None
    expected = {k: v for k, v in ADA_PAYLOAD.items() if k != "id"} | {"externalId": "42"}
    assert {k: record[k] for k in expected} == expected


def test_rate_headers_state_a_limit_unless_absent_or_unlimited() -> None:
    headers = {
        "X-HubSpot-RateLimit-Max": "100",
        "X-HubSpot-RateLimit-Remaining": "7",
        "X-HubSpot-RateLimit-Interval-Milliseconds": "10000",
    }
    rate = RateHeaders.of(headers)

    assert (rate.max, rate.remaining, rate.interval_seconds, rate.limited) == (100, 7, 10.0, True)
    assert not RateHeaders.of({}).limited
    assert not RateHeaders.of({**headers, "X-HubSpot-RateLimit-Max": "1000000000"}).limited


def test_the_429_policy_is_read_from_the_body() -> None:
    assert policy_of({"errorType": "RATE_LIMIT", "policyName": "DAILY"}) == "DAILY"
    assert policy_of({"message": "x"}) is None
    assert policy_of("not json") is None


def test_the_daily_reset_believes_retry_after_else_the_next_quarter_hour() -> None:
    now = datetime(2026, 12, 4, 21, 7, 30, tzinfo=UTC)

    assert daily_reset_seconds("3600", now) == 3600
    # 21:07:30 -> 21:15:00 (every time zone's midnight falls on a quarter hour in UTC).
    assert daily_reset_seconds(None, now) == 450
    assert daily_reset_seconds("soon", now) == 450


def test_a_207_settles_the_ids_its_errors_name_with_their_status() -> None:
    body = {
        "status": "COMPLETE",
        "results": [{"id": "901", "properties": {"crm_sync_id": "1"}}],
        "errors": [
            {
                "status": "error",
                "category": "VALIDATION_ERROR",
                "message": "bad",
                "context": {"ids": ["2"]},
            },
            {
                "status": "error",
                "category": "CONFLICT",
                "message": "busy",
                "context": {"ids": ["3"]},
            },
            {"category": "X", "message": "m", "context": {"ids": ["4"], "statusCode": ["503"]}},
            {"category": "INTERNAL_ERROR", "message": "oops", "context": {"ids": ["5"]}},
        ],
    }

    errors = record_errors(body)

    assert {key: error.status for key, error in errors.items()} == {
        "2": 400,
        "3": 409,
        "4": 503,
        "5": 500,
    }
    assert "VALIDATION_ERROR" in errors["2"].detail and "bad" in errors["2"].detail
    assert list(results_by(body, lambda r: r["properties"]["crm_sync_id"])) == ["1"]


def test_an_answer_is_described_with_its_category_and_message() -> None:
    body = {"status": "error", "category": "INVALID_AUTHENTICATION", "message": "no " * 200}

    text = describe(401, body)

    assert text.startswith("HubSpot answered 401 INVALID_AUTHENTICATION: no no")
    assert len(text) < 400
    assert describe(502, None, "text/html") == (
        "HubSpot answered 502 with a body that is not JSON (text/html)"
    )


def test_redact_removes_every_secret() -> None:
    assert redact("token pat-na1-x in pat-na1-x", ["pat-na1-x", ""]) == (
        "token [redacted] in [redacted]"
    )


async def test_advertised_limits_pace_calls_before_any_429() -> None:
    throttle = CallThrottle()
    assert throttle.pace is None

    throttle.advertised(100, 50, 10.0)

    assert throttle.pace == pytest.approx(9.5)
    loop = asyncio.get_running_loop()
    start = loop.time()
    for _ in range(4):
        await throttle.wait_turn(patience=5)
    # Four departures at 9.5 a second: at least three intervals apart.
    assert loop.time() - start >= 3 / 9.5 - 0.01
    throttle.advertised(None, None, None)
    assert throttle.pace is None


async def test_no_call_left_in_the_window_pauses_for_one_calls_share() -> None:
    throttle = CallThrottle()

    throttle.advertised(10, 0, 1.0)

    assert throttle.paused
    await asyncio.wait_for(throttle.wait_turn(patience=5), 1)
    assert not throttle.paused
