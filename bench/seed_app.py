"""The seed's design, the benchmark's baseline: a write that awaits its CRM call in the request.

What crm-sync replaced, built with the same stack (FastAPI, SQLAlchemy async with the
customer service's own engine settings, httpx, uvicorn): `POST /api/customers` inserts the
customer and commits, calls the CRM's `POST /api/crm/customers` and waits for its answer,
then records the CRM id and commits again, and only then answers 201. No outbox, no
retries, no ordering: when the CRM fails, the write fails with it (502) and the CRM never
hears of the customer. It exists to be measured against: synced writes per second and
the service's CPU per synced write.

Run as `python bench/seed_app.py` with `DATABASE_URL`, `CRM_BASE_URL`, `HOST` and `PORT`;
it creates its one table at start-up.
"""

from __future__ import annotations

import os
import uuid
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from datetime import UTC, datetime
from typing import Annotated

import httpx
import uvicorn
from fastapi import Depends, FastAPI, Request, Response
from pydantic import BaseModel, ConfigDict, EmailStr, Field
from pydantic.alias_generators import to_camel
from sqlalchemy import DateTime, Integer, String
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column

from customer_service.db import create_engine


class Base(DeclarativeBase):
    pass


class SeedCustomer(Base):
    __tablename__ = "seed_customers"

    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    first_name: Mapped[str] = mapped_column(String(100))
    last_name: Mapped[str] = mapped_column(String(100))
    email: Mapped[str] = mapped_column(String(320), unique=True)
    phone: Mapped[str | None] = mapped_column(String(100))
    address: Mapped[str] = mapped_column(String(1000))
    crm_id: Mapped[str | None] = mapped_column(String(64))
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True))


class Camel(BaseModel):
    model_config = ConfigDict(alias_generator=to_camel, populate_by_name=True)


class Address(Camel):
    street: str | None = None
    city: str | None = None
    state: str | None = None
    postal_code: str | None = None
    country: str | None = None


class CustomerCreate(Camel):
    first_name: str = Field(min_length=1, max_length=100)
    last_name: str = Field(min_length=1, max_length=100)
    email: EmailStr
    phone: str | None = None
    address: Address | None = None


class CustomerRead(Camel):
    id: int
    first_name: str
    last_name: str
    email: str
    crm_id: str | None
    created_at: datetime


def crm_address(address: Address | None) -> str:
    if address is None:
        return ""
    parts = (address.street, address.city, address.state, address.postal_code, address.country)
    return ", ".join(part for part in parts if part)


async def get_session(request: Request) -> AsyncIterator[AsyncSession]:
    async with request.app.state.sessionmaker() as session:
        yield session


SessionDep = Annotated[AsyncSession, Depends(get_session)]


def create_app(database_url: str, crm_base_url: str) -> FastAPI:
    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        engine = create_engine(database_url)
        async with engine.begin() as connection:
            await connection.run_sync(Base.metadata.create_all)
        app.state.sessionmaker = async_sessionmaker(engine, expire_on_commit=False)
        async with httpx.AsyncClient(base_url=crm_base_url, timeout=10.0) as client:
            app.state.crm = client
            yield
        await engine.dispose()

    app = FastAPI(title="seed design", lifespan=lifespan)

    @app.get("/health")
    async def health() -> dict[str, str]:
        return {"status": "ok"}

    @app.post("/api/customers", status_code=201, response_model=CustomerRead)
    async def create_customer(
        body: CustomerCreate, session: SessionDep, request: Request, response: Response
    ) -> CustomerRead:
        customer = SeedCustomer(
            first_name=body.first_name,
            last_name=body.last_name,
            email=body.email,
            phone=body.phone,
            address=crm_address(body.address),
            created_at=datetime.now(UTC),
        )
        session.add(customer)
        await session.commit()
        client: httpx.AsyncClient = request.app.state.crm
        try:
            answer = await client.post(
                "/api/crm/customers",
                json={
                    "externalId": str(customer.id),
                    "firstName": customer.first_name,
                    "lastName": customer.last_name,
                    "email": customer.email,
                    "phone": customer.phone,
                    "address": customer.address,
                },
                headers={"Idempotency-Key": str(uuid.uuid4())},
            )
        except httpx.HTTPError:
            response.status_code = 502
            return CustomerRead.model_validate(customer, from_attributes=True)
        if answer.status_code in (200, 201, 409):
            customer.crm_id = answer.json()["id"]
            await session.commit()
        else:
            response.status_code = 502
        return CustomerRead.model_validate(customer, from_attributes=True)

    return app


def main() -> None:
    app = create_app(os.environ["DATABASE_URL"], os.environ["CRM_BASE_URL"])
    uvicorn.run(
        app,
        host=os.environ.get("HOST", "127.0.0.1"),
        port=int(os.environ["PORT"]),
        log_level="warning",
    )


if __name__ == "__main__":
    main()
