"""Pydantic base shared by the API schemas: camelCase on the wire."""

from typing import Generic, TypeVar

from pydantic import BaseModel, ConfigDict, field_validator
from pydantic.alias_generators import to_camel


class CamelModel(BaseModel):
    model_config = ConfigDict(alias_generator=to_camel, populate_by_name=True, from_attributes=True)


T = TypeVar("T")


class InputModel(CamelModel):
    """A request body: text with NUL characters is refused (PostgreSQL cannot store it)."""

    @field_validator("*", mode="after")
    @classmethod
    def _no_nul(cls, value: object) -> object:
        if isinstance(value, str) and "\x00" in value:
            raise ValueError("must not contain NUL characters")
        return value


# Ids are checked against their column's range: out of range is 422, never a database error.
INT32_MAX = 2**31 - 1
INT64_MAX = 2**63 - 1


class Page(CamelModel, Generic[T]):
    items: list[T]
    total: int
