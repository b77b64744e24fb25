"""SQL of the `customers` table."""

from sqlalchemy import func, select
from sqlalchemy.ext.asyncio import AsyncSession

from customer_service.customers.models import Customer


async def get(session: AsyncSession, customer_id: int) -> Customer | None:
    return await session.get(Customer, customer_id)


async def email_owner(session: AsyncSession, email_key: str) -> int | None:
    owner: int | None = await session.scalar(
        select(Customer.id).where(Customer.email_key == email_key)
    )
    return owner


async def page(session: AsyncSession, limit: int, offset: int) -> tuple[list[Customer], int]:
    total = await session.scalar(select(func.count()).select_from(Customer))
    rows = await session.scalars(select(Customer).order_by(Customer.id).limit(limit).offset(offset))
    return list(rows.all()), int(total or 0)
