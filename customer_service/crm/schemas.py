"""The CRM's own model, as this service writes it (the CRM mock declares it separately)."""

from pydantic import BaseModel, ConfigDict
from pydantic.alias_generators import to_camel


class CrmCustomerRequest(BaseModel):
    model_config = ConfigDict(alias_generator=to_camel, populate_by_name=True)

    external_id: str
    first_name: str
    last_name: str
    email: str
    phone: str | None = None
    address: str = ""

    def to_json(self) -> dict[str, object]:
        return self.model_dump(by_alias=True)
