import pytest
from pydantic import ValidationError

from customer_service.config import Settings, describe_error
from customer_service.customers.service import parse_if_match
from customer_service.errors import VersionMismatch


@pytest.mark.parametrize("value", ['"3"', "3", 'W/"3"', ' "3" '])
def test_if_match_takes_quoted_or_bare_version(value: str) -> None:
    assert parse_if_match(value) == 3


def test_if_match_star_or_absent_matches_any_version() -> None:
    assert parse_if_match("*") is None
    assert parse_if_match(None) is None


def test_if_match_garbage_is_a_mismatch() -> None:
    with pytest.raises(VersionMismatch):
        parse_if_match('"abc"')


def test_bad_setting_is_one_line_naming_the_variable(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("RETRY_CONCURRENCY", "zero")
    with pytest.raises(ValidationError) as info:
        Settings()
    line = describe_error(info.value)
    assert line.startswith("invalid setting RETRY_CONCURRENCY:")
    assert "\n" not in line


def test_sync_mode_must_be_http_or_kafka(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("SYNC_MODE", "carrier-pigeon")
    with pytest.raises(ValidationError) as info:
        Settings()
    assert describe_error(info.value).startswith("invalid setting SYNC_MODE:")
