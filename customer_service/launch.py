"""The `customer-service` command's entry point: `cli.main`, imported with the garbage
collector off.

Importing the service (FastAPI, SQLAlchemy, pydantic, aiohttp, alembic) makes a few hundred
thousand objects, and the collector walked the growing heap again and again while they
were made: 0.18 s of a 1.07 s start-up (measured 2026-12-06), time in which a restarted
replica delivers nothing. `cli.main` turns it back on once the command is known (`serve`
after freezing what its start-up made: `cli._tune_gc`).
"""

import gc


def main() -> int:
    gc.disable()
    from customer_service.cli import main as run

    return run()
