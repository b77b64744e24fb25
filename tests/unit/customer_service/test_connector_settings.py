"""The connector's settings: one clear line for each bad value, and secrets kept out of
the settings' text."""

import json
from pathlib import Path

import pytest
from pydantic import ValidationError

from customer_service.config import Settings, describe_error


def _line(**values: object) -> str:
    with pytest.raises(ValidationError) as caught:
        Settings(**values)
    return describe_error(caught.value)


def test_batch_size_defaults_to_the_connectors_and_keeps_under_its_crms_maximum() -> None:
    assert Settings().crm_batch_size == 1
    assert Settings(crm_connector="hubspot", hubspot_access_token="t").crm_batch_size == 100
    assert Settings(crm_batch_size=100).crm_batch_size == 100
    assert _line(crm_batch_size=101) == (
        "invalid settings: CRM_BATCH_SIZE must be at most 100 for CRM_CONNECTOR=mock"
    )


def test_hubspot_needs_its_token() -> None:
    assert _line(crm_connector="hubspot") == (
        "invalid settings: CRM_CONNECTOR=hubspot needs HUBSPOT_ACCESS_TOKEN"
    )
    assert _line(crm_connector="zoho").startswith("invalid setting CRM_CONNECTOR: Input should")


def test_a_field_map_is_checked_at_start_up(tmp_path: Path) -> None:
    good = tmp_path / "map.json"
    good.write_text(json.dumps({"phone": "mobilephone"}))
    assert Settings(crm_field_map=str(good)).crm_field_map == str(good)
    assert _line(crm_field_map=str(tmp_path / "none.json")).startswith(
        "invalid setting CRM_FIELD_MAP: cannot read "
    )
    bad = tmp_path / "bad.json"
    bad.write_text("{not json")
    assert _line(crm_field_map=str(bad)) == f"invalid setting CRM_FIELD_MAP: {bad} is not JSON"
    bad.write_text(json.dumps({"phone": "phone", "email": "phone"}))
    assert _line(crm_field_map=str(bad)) == (
        f"invalid setting CRM_FIELD_MAP: {bad} maps two customer fields to phone"
    )
    bad.write_text(json.dumps({"shoeSize": "shoe"}))
    assert _line(crm_field_map=str(bad)) == (
        f"invalid setting CRM_FIELD_MAP: {bad} names unknown customer fields: shoeSize"
    )


def test_secrets_stay_out_of_the_settings_text() -> None:
    settings = Settings(
        crm_api_token="tok-1",
        api_key="key-2",
        crm_connector="hubspot",
        hubspot_access_token="pat-3",
    )
    for text in (repr(settings), str(settings)):
        assert "tok-1" not in text and "key-2" not in text and "pat-3" not in text
