"""Run the alembic migrations of the customer service (the only way its schema changes)."""

from pathlib import Path

from alembic import command
from alembic.config import Config
from alembic.runtime.migration import MigrationContext
from alembic.script import ScriptDirectory
from sqlalchemy.engine import Connection

from customer_service.db import create_engine

MIGRATIONS = Path(__file__).parent / "migrations"


def alembic_config(url: str) -> Config:
    config = Config(str(MIGRATIONS / "alembic.ini"))
    config.set_main_option("script_location", str(MIGRATIONS))
    config.set_main_option("sqlalchemy.url", url.replace("%", "%%"))
    return config


async def migrate(url: str, revision: str = "head") -> None:
    """Bring the database at `url` up to `revision`."""
    config = alembic_config(url)

    def upgrade(connection: Connection) -> None:
        config.attributes["connection"] = connection
        command.upgrade(config, revision)

    engine = create_engine(url)
    try:
        async with engine.begin() as connection:
            await connection.run_sync(upgrade)
    finally:
        await engine.dispose()


async def schema_problem(url: str) -> str | None:
    """Why the database at `url` cannot be served yet (None when it is at the head
    revision): the service never runs on a schema its code does not match."""
    head = ScriptDirectory.from_config(alembic_config(url)).get_current_head()

    def current(connection: Connection) -> str | None:
        return MigrationContext.configure(connection).get_current_revision()

    engine = create_engine(url)
    try:
        async with engine.connect() as connection:
            revision = await connection.run_sync(current)
    finally:
        await engine.dispose()
    if revision == head:
        return None
    return (
        f"the database is at revision {revision or 'none'}, the code needs {head}: "
        "run 'customer-service migrate' first"
    )
