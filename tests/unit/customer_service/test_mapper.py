from customer_service.crm.mapper import CustomerMapper, format_address
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
