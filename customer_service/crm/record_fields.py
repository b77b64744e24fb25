"""What the HubSpot and Salesforce mappings share (pure, no I/O): the customer fields a
CRM record carries, what reconciliation compares, and how a mapping is chosen: the
CRM's SPEC defaults, the name the customer id goes under, then `CRM_FIELD_MAP` on top,
field by field, the id's included."""

from collections.abc import Mapping

from customer_service.config import CUSTOMER_FIELDS

# The customer fields that make a record, in SPEC order (the id apart).
VALUE_FIELDS = tuple(field for field in CUSTOMER_FIELDS if field != "id")
# What reconciliation compares, in neutral names: `externalId` is the customer id's.
COMPARED_FIELDS = ("externalId", *VALUE_FIELDS)


def choose_names(
    defaults: Mapping[str, str], id_name: str, overrides: Mapping[str, str] | None
) -> tuple[dict[str, str], str]:
    """Customer field -> the CRM's name for it, and the name of the id's field: the
    defaults with `id_name`, then `overrides` (`CRM_FIELD_MAP`) on top."""
    chosen = {**defaults, "id": id_name, **(overrides or {})}
    id_chosen = chosen.pop("id")
    return chosen, id_chosen
