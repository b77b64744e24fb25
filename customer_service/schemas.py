"""Pydantic base shared by the API schemas: camelCase on the wire."""

from typing import Generic, TypeVar

from pydantic import BaseModel, ConfigDict
from pydantic.alias_generators import to_camel


class CamelModel(BaseModel):
    model_config = ConfigDict(alias_generator=to_camel, populate_by_name=True, from_attributes=True)


T = TypeVar("T")


class Page(CamelModel, Generic[T]):
    items: list[T]
    total: int
