"""The pure comparison of reconciliation: which CRM records are drift, and of which kind."""

from typing import Any

from customer_service.reconciliation.compare import (
    DriftKind,
    IdBitmap,
    Local,
    classify_page,
    customer_id_of,
    differing_fields,
)

ADA = {
    "externalId": "1",
    "firstName": "Ada",
    "lastName": "Lovelace",
    "email": "ada@example.com",
    "phone": None,
    "address": "London",
}


def record(crm_id: str = "c1", **changes: Any) -> dict[str, Any]:
    return {"id": crm_id, **ADA, "createdAt": "2026-01-01T00:00:00Z", **changes}


def test_an_equal_record_is_no_drift() -> None:
    assert classify_page([record()], {1: Local(ADA, busy=False)}) == []


def test_a_record_with_other_values_is_different_and_names_the_fields() -> None:
    [found] = classify_page([record(lastName="King", phone="")], {1: Local(ADA, busy=False)})
    assert found.kind is DriftKind.DIFFERENT
    assert (found.customer_id, found.crm_id, found.fields) == (1, "c1", ("lastName",))


def test_a_record_of_no_customer_is_extra() -> None:
    [found] = classify_page([record("c9", externalId="9")], {})
    assert (found.kind, found.external_id, found.customer_id, found.crm_id) == (
        DriftKind.EXTRA,
        "9",
        9,
        "c9",
    )


def test_an_external_id_that_is_no_customer_id_is_extra_without_one() -> None:
    found = classify_page([record("x", externalId="007"), record("y", externalId="abc")], {})
    assert [(f.kind, f.external_id, f.customer_id) for f in found] == [
        (DriftKind.EXTRA, "007", None),
        (DriftKind.EXTRA, "abc", None),
    ]


def test_customers_with_undelivered_requests_are_never_drift() -> None:
    busy_customer = Local(ADA, busy=True)
    deleted_with_delete_queued = Local(None, busy=True)
    records = [record(lastName="Old"), record("c2", externalId="2")]
    assert classify_page(records, {1: busy_customer, 2: deleted_with_delete_queued}) == []


def test_customer_id_of_accepts_only_canonical_ids_in_range() -> None:
    assert [customer_id_of(v) for v in ("1", "2147483647")] == [1, 2147483647]
    for bad in ("0", "-1", "01", "2147483648", "", " 1", "\uff11", "1.0"):
        assert customer_id_of(bad) is None, bad


def test_absent_and_null_phone_are_equal() -> None:
    assert differing_fields({**ADA, "phone": None}, {**ADA, "phone": ""}) == ()
    assert differing_fields(ADA, {**ADA, "email": "other@example.com"}) == ("email",)


def test_id_bitmap_remembers_exactly_the_ids_added() -> None:
    seen = IdBitmap()
    for value in (1, 8, 9, 1000):
        seen.add(value)
    assert [v for v in range(1, 1002) if v in seen] == [1, 8, 9, 1000]
