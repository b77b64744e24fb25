"""The pure parts of the Salesforce connector: the Contact mapping, what Salesforce's
answers say (each record's result, transient or permanent, the API limit's hold), SOQL
quoting, redaction, and the connector's settings."""

from datetime import UTC, datetime

import pytest
from pydantic import ValidationError
from support import ADA_PAYLOAD

from customer_service.config import Settings, describe_error
from customer_service.crm.salesforce_answers import (
    LIMIT_HOLD_SECONDS,
    describe,
    error_code,
    limit_hold_seconds,
    record_error,
    redact,
    soql_string,
)
from customer_service.crm.salesforce_mapping import FieldMap
from customer_service.sync.retry import is_permanent


def test_the_default_mapping_is_spec_4b_with_mailing_parts_and_nulls() -> None:
    mapping = FieldMap.of("Crm_Sync_Id__c")

    assert mapping.to_record(ADA_PAYLOAD) == {
        "attributes": {"type": "Contact"},
        "FirstName": "Ada",
        "LastName": "Lovelace",
        "Email": "ada@example.com",
        "Phone": None,
        "MailingStreet": "12 St James's Square",
        "MailingCity": "London",
        "MailingState": None,
        "MailingPostalCode": "SW1Y 4JH",
        "MailingCountry": "GB",
        "Crm_Sync_Id__c": "42",
    }


def test_crm_field_map_overrides_field_by_field_the_external_id_included() -> None:
    mapping = FieldMap.of("Crm_Sync_Id__c", {"address.postalCode": "Zip__c", "id": "Shop__c"})

    record = mapping.to_record(ADA_PAYLOAD)

    assert record["Zip__c"] == "SW1Y 4JH" and "MailingPostalCode" not in record
    assert record["Shop__c"] == "42" and "Crm_Sync_Id__c" not in record
    assert mapping.external_id_field == "Shop__c"


def test_a_legacy_payload_of_the_mock_record_still_maps() -> None:
    legacy = {"externalId": "7", "firstName": "A", "lastName": "B", "email": "a@b.co",
              "phone": None, "address": "1 Road, Town"}  # fmt: skip

    record = FieldMap.of("Crm_Sync_Id__c").to_record(legacy)

    assert (record["Crm_Sync_Id__c"], record["MailingStreet"]) == ("7", "1 Road, Town")


def test_a_payload_without_a_last_name_is_named_before_any_call() -> None:
    mapping = FieldMap.of("Crm_Sync_Id__c")

    assert mapping.missing_last_name(ADA_PAYLOAD) is None
    why = mapping.missing_last_name({**ADA_PAYLOAD, "lastName": ""})
    assert why is not None and "LastName" in why and "lastName" in why
    # Mapped elsewhere: the customer field now behind LastName is the one required.
    moved = FieldMap.of("Crm_Sync_Id__c", {"lastName": "Description", "firstName": "LastName"})
    assert moved.missing_last_name({**ADA_PAYLOAD, "lastName": None}) is None
    assert moved.missing_last_name({**ADA_PAYLOAD, "firstName": None}) is not None


def test_a_contact_reads_back_as_a_neutral_record_whatever_the_case_of_its_fields() -> None:
    mapping = FieldMap.of("Crm_Sync_Id__c")
    contact = {
        "attributes": {"type": "Contact"},
        "Id": "003xx",
        "FirstName": "Ada",
        "lastname": "Lovelace",
        "Email": "ada@example.com",
        "MailingCity": "London",
        "crm_sync_id__c": "42",
    }

    record = mapping.record(contact)

    assert record["id"] == "003xx" and record["externalId"] == "42"
    assert (record["lastName"], record["address.city"], record["phone"]) == (
        "Lovelace",
        "London",
        None,
    )


@pytest.mark.parametrize(
    ("code", "permanent"),
    [
        ("UNABLE_TO_LOCK_ROW", False),
        ("SERVER_UNAVAILABLE", False),
        ("UNKNOWN_EXCEPTION", False),
        ("REQUEST_LIMIT_EXCEEDED", False),
        ("REQUIRED_FIELD_MISSING", True),
        ("INVALID_EMAIL_ADDRESS", True),
        ("STRING_TOO_LONG", True),
        ("DUPLICATE_VALUE", True),
        ("FIELD_CUSTOM_VALIDATION_EXCEPTION", True),
    ],
)
def test_a_record_error_is_retried_or_dead_by_its_documented_meaning(
    code: str, permanent: bool
) -> None:
    result = {
        "id": None,
        "success": False,
        "errors": [{"statusCode": code, "message": "why", "fields": ["LastName"]}],
    }

    error = record_error(result)

    assert error is not None and error.code == code
    assert is_permanent(error.status) is permanent
    assert error.detail == f"Salesforce refused this record ({code}) [LastName]: why"


def test_a_record_taken_has_no_error() -> None:
    assert record_error({"id": "003", "success": True, "errors": [], "created": True}) is None
    odd = record_error({"id": "003"})
    assert odd is not None and not is_permanent(odd.status)


def test_the_api_limit_holds_for_its_retry_after_else_a_while() -> None:
    now = datetime(2026, 12, 6, 10, 0, tzinfo=UTC)
    assert limit_hold_seconds("120", now) == 120
    assert limit_hold_seconds(None, now) == LIMIT_HOLD_SECONDS
    assert limit_hold_seconds("soon", now) == LIMIT_HOLD_SECONDS


def test_an_answer_is_described_with_its_error_code_and_message() -> None:
    limit = [{"message": "TotalRequests Limit exceeded.", "errorCode": "REQUEST_LIMIT_EXCEEDED"}]
    assert error_code(limit) == "REQUEST_LIMIT_EXCEEDED"
    assert describe(403, limit) == (
        "Salesforce answered 403 REQUEST_LIMIT_EXCEEDED: TotalRequests Limit exceeded."
    )
    oauth = {"error": "invalid_client", "error_description": "invalid client credentials"}
    assert describe(400, oauth, what="Salesforce's token endpoint") == (
        "Salesforce's token endpoint answered 400 invalid_client: invalid client credentials"
    )
    assert describe(502, None, "text/html") == (
        "Salesforce answered 502 with a body that is not JSON (text/html)"
    )


def test_soql_strings_are_quoted_and_redaction_removes_every_secret() -> None:
    assert soql_string("O'Brien\\") == "'O\\'Brien\\\\'"
    assert redact("token 00D!abc and secret s3cr3t", ["00D!abc", "s3cr3t", ""]) == (
        "token [redacted] and secret [redacted]"
    )


def _line(**values: object) -> str:
    with pytest.raises(ValidationError) as caught:
        Settings(**values)
    return describe_error(caught.value)


def test_salesforce_settings_need_client_credentials_and_default_to_spec_2() -> None:
    assert _line(crm_connector="salesforce", salesforce_client_id="id") == (
        "invalid settings: CRM_CONNECTOR=salesforce needs SALESFORCE_CLIENT_ID and"
        " SALESFORCE_CLIENT_SECRET"
    )
    settings = Settings(
        crm_connector="salesforce", salesforce_client_id="id", salesforce_client_secret="s-1"
    )
    assert settings.crm_batch_size == 200
    assert settings.salesforce_login_url == "https://login.salesforce.com"
    assert settings.salesforce_api_version == "62.0"
    assert settings.salesforce_external_id_field == "Crm_Sync_Id__c"
    assert "s-1" not in repr(settings) and "s-1" not in str(settings)
    assert _line(
        crm_connector="salesforce",
        salesforce_client_id="id",
        salesforce_client_secret="s",
        crm_batch_size=201,
    ) == ("invalid settings: CRM_BATCH_SIZE must be at most 200 for CRM_CONNECTOR=salesforce")
    assert _line(salesforce_api_version="62").startswith("invalid setting SALESFORCE_API_VERSION:")
