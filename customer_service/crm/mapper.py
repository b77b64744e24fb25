"""CustomerMapper: our customer to the CRM's `CrmCustomerRequest`."""

from customer_service.crm.schemas import CrmCustomerRequest
from customer_service.customers.models import Customer

ADDRESS_SEPARATOR = ", "


def format_address(*parts: str | None) -> str:
    """The present parts (street, city, state, postalCode, country) joined by ", "."""
    return ADDRESS_SEPARATOR.join(p.strip() for p in parts if p is not None and p.strip())


class CustomerMapper:
    """Pure mapping, no I/O."""

    @staticmethod
    def to_crm(customer: Customer) -> CrmCustomerRequest:
        return CrmCustomerRequest(
            external_id=str(customer.id),
            first_name=customer.first_name,
            last_name=customer.last_name,
            email=customer.email,
            phone=customer.phone,
            address=format_address(
                customer.street,
                customer.city,
                customer.state,
                customer.postal_code,
                customer.country,
            ),
        )
