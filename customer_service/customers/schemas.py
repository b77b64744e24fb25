"""Customer API bodies: `CustomerCreate` in, `CustomerRead` out."""

from datetime import datetime
from enum import StrEnum
from typing import Annotated

from pydantic import EmailStr, Field, StringConstraints

from customer_service.schemas import CamelModel, InputModel

Name = Annotated[str, StringConstraints(strip_whitespace=True, min_length=1, max_length=100)]


class Address(InputModel):
    street: Annotated[str | None, Field(max_length=200)] = None
    city: Annotated[str | None, Field(max_length=100)] = None
    state: Annotated[str | None, Field(max_length=100)] = None
    postal_code: Annotated[str | None, Field(max_length=20)] = None
    country: Annotated[str | None, Field(max_length=100)] = None


class CustomerCreate(InputModel):
    """The body of POST and PUT (PUT is a full replacement)."""

    first_name: Name
    last_name: Name
    email: Annotated[EmailStr, Field(max_length=320)]
    phone: Annotated[str | None, Field(max_length=50)] = None
    address: Address | None = None


class CrmStatus(StrEnum):
    SYNCED = "synced"
    PENDING = "pending"
    FAILED = "failed"
    DEAD = "dead"


class CrmState(CamelModel):
    id: str | None
    status: CrmStatus
    synced_version: int | None


class CustomerRead(CamelModel):
    id: int
    first_name: str
    last_name: str
    email: str
    phone: str | None
    address: Address
    version: int
    created_at: datetime
    updated_at: datetime
    crm: CrmState
