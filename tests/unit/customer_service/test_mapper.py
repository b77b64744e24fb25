from customer_service.crm.mapper import CustomerMapper, format_address, snapshot, to_mock_record
from customer_service.customers.models import Customer


def _customer(**address: str | None) -> Customer:
    return Customer(
        id=42,
        first_name="Ada",
        last_name="Lovelace",
        email="ada@example.com",
        phone="+44 20 7946 0000",
        **address,
    )


def test_full_address_joins_parts_in_spec_order() -> None:
    customer = _customer(
        street="12 St James's Square",
        city="London",
        state=None,
        postal_code="SW1Y 4JH",
        country="GB",
    )
    body = CustomerMapper.to_crm(customer).to_json()
    assert body == {
        "externalId": "42",
        "firstName": "Ada",
        "lastName": "Lovelace",
        "email": "ada@example.com",
        "phone": "+44 20 7946 0000",
        "address": "12 St James's Square, London, SW1Y 4JH, GB",
    }


def test_no_address_parts_maps_to_empty_string() -> None:
    assert CustomerMapper.to_crm(_customer()).address == ""


def test_blank_parts_are_skipped_and_state_keeps_its_place() -> None:
    assert format_address("  ", "Paris", "IDF", None, "FR") == "Paris, IDF, FR"


def test_external_id_is_the_service_id_as_text() -> None:
    assert CustomerMapper.to_crm(_customer()).external_id == "42"


def test_the_outbox_keeps_the_customers_own_fields_and_the_mock_joins_the_address() -> None:
    customer = _customer(street="12 St James's Square", city="London", country="GB")
    kept = snapshot(customer)
    assert kept["address.street"] == "12 St James's Square"
    assert kept["address.postalCode"] is None
    assert to_mock_record(kept) == CustomerMapper.to_crm(customer).to_json()


def test_a_payload_written_as_the_mocks_record_is_sent_as_it_is() -> None:
    legacy = CustomerMapper.to_crm(_customer(city="Paris")).to_json()
    assert to_mock_record(legacy) is legacy
