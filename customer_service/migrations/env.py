"""Alembic environment: runs on the connection `customer_service.migrate` hands it,
or, from the alembic command line, on `DATABASE_URL`."""

import asyncio

from alembic import context
from sqlalchemy.engine import Connection

from customer_service.config import Settings
from customer_service.customers import models as _customers  # noqa: F401
from customer_service.db import Base, create_engine
from customer_service.sink import models as _sink  # noqa: F401
from customer_service.sync import models as _sync  # noqa: F401

config = context.config
target_metadata = Base.metadata


def run_on(connection: Connection) -> None:
    context.configure(
        connection=connection,
        target_metadata=target_metadata,
        render_as_batch=connection.dialect.name == "sqlite",
        compare_type=True,
    )
    with context.begin_transaction():
        context.run_migrations()


async def run_from_settings() -> None:
    engine = create_engine(config.get_main_option("sqlalchemy.url") or Settings().database_url)
    async with engine.begin() as connection:
        await connection.run_sync(run_on)
    await engine.dispose()


connection = config.attributes.get("connection")
if connection is not None:
    run_on(connection)
else:
    asyncio.run(run_from_settings())
