"""The pure rules of the gateway in front of `/api/crm/customers*`."""

import pytest

from crm_mock.gateway import crm_id_in_path, is_authorized, is_customer_call, parse_json_body


@pytest.mark.parametrize(
    ("path", "expected"),
    [
        ("/api/crm/customers", True),
        ("/api/crm/customers/crm_1", True),
        ("/api/crm/customersX", False),
        ("/api/crm/_faults", False),
        ("/api/crm/_requests", False),
        ("/health", False),
    ],
)
def test_only_customer_paths_go_through_the_gateway(path: str, expected: bool) -> None:
    assert is_customer_call(path) is expected


@pytest.mark.parametrize(
    ("path", "expected"),
    [
        ("/api/crm/customers/crm_1", "crm_1"),
        ("/api/crm/customers", None),
        ("/api/crm/customers/", None),
        ("/api/crm/customers/crm_1/extra", None),
    ],
)
def test_crm_id_is_read_from_the_record_path_only(path: str, expected: str | None) -> None:
    assert crm_id_in_path(path) == expected


@pytest.mark.parametrize(
    ("header", "token", "expected"),
    [
        (None, "", True),
        ("Bearer anything", "", True),
        (None, "s3cret", False),
        ("Bearer s3cret", "s3cret", True),
        ("bearer s3cret", "s3cret", True),
        ("Bearer s3cre", "s3cret", False),
        ("Bearer s3cretX", "s3cret", False),
        ("Basic s3cret", "s3cret", False),
        ("s3cret", "s3cret", False),
    ],
)
def test_bearer_token_check(header: str | None, token: str, expected: bool) -> None:
    assert is_authorized(header, token) is expected


@pytest.mark.parametrize(
    ("raw", "expected"),
    [
        (b'{"externalId": "42"}', {"externalId": "42"}),
        (b"[1, 2]", [1, 2]),
        (b"", None),
        (b"  ", None),
        (b"{not json", None),
        (b"\xff\xfe", None),
        (b'{"x": NaN}', None),
    ],
)
def test_logged_body_is_the_json_received_or_null(raw: bytes, expected: object) -> None:
    assert parse_json_body(raw) == expected
