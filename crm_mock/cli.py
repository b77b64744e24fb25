"""The `crm-mock` command: `serve` runs the HTTP API, `consume` the Kafka consumer."""

import argparse
import gc
import sys

from pydantic import ValidationError

from crm_mock.config import CrmSettings, describe_settings_error

PROG = "crm-mock"
EXIT_USAGE = 2


def build_parser() -> argparse.ArgumentParser:
    """The argument parser of `crm-mock`."""
    parser = argparse.ArgumentParser(
        prog=PROG,
        description="A stand-in for a third-party CRM. Settings come from the environment "
        "and a .env file (HOST, PORT, CRM_DATABASE_URL, CRM_API_TOKEN, KAFKA_*, LOG_FORMAT).",
    )
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    commands.add_parser("serve", help="run the CRM's HTTP API on HOST:PORT")
    commands.add_parser("consume", help="apply the customer events of KAFKA_TOPIC to the CRM")
    dlq = commands.add_parser("dlq", help="the dead-lettered events of the consumer")
    dlq_commands = dlq.add_subparsers(dest="dlq_command", required=True, metavar="ACTION")
    dlq_commands.add_parser("list", help="the open dead letters, oldest first, as JSON lines")
    replay = dlq_commands.add_parser("replay", help="apply dead letters now, oldest first")
    target = replay.add_mutually_exclusive_group(required=True)
    target.add_argument("id", nargs="?", type=int, help="the dead letter to apply")
    target.add_argument("--all", action="store_true", help="every open dead letter")
    return parser


def main(argv: list[str] | None = None) -> int:
    """Run `crm-mock`; returns the exit status (2 for bad usage or a bad setting)."""
    args = build_parser().parse_args(argv)
    try:
        settings = CrmSettings()
    except ValidationError as error:
        print(f"{PROG}: {describe_settings_error(error)}", file=sys.stderr)
        return EXIT_USAGE
    if args.command == "serve":
        return serve(settings)
    if args.command == "dlq":
        from crm_mock.kafka_commands import list_letters, replay

        if args.dlq_command == "list":
            return list_letters(settings)
        return replay(settings, None if args.all else args.id)
    return consume(settings)


def serve(settings: CrmSettings) -> int:
    """Run the HTTP API in the foreground until interrupted."""
    # Imported here so that `--help` and a bad setting answer fast.
    import uvicorn

    from crm_mock.app import create_app
    from crm_mock.logging_config import configure_logging

    configure_logging(settings.log_format)
    app = create_app(settings)
    _tune_gc()
    uvicorn.run(app, host=settings.host, port=settings.port, log_config=None)
    return 0


def consume(settings: CrmSettings) -> int:
    """Run the Kafka consumer in the foreground until interrupted (SIGINT or SIGTERM)."""
    from crm_mock.kafka_commands import run_consumer
    from crm_mock.logging_config import configure_logging

    configure_logging(settings.log_format)
    _tune_gc()
    return run_consumer(settings)


def _tune_gc() -> None:
    """As the customer service does (`customer_service.cli._tune_gc`): what start-up made
    is never walked again, and collections run less often, so a stand-in for a remote CRM
    does not pause for 50-300 ms every few seconds under load."""
    gc.collect()
    gc.freeze()
    gc.set_threshold(20_000, 50, 100)
