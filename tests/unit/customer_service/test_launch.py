"""The `customer-service` command starts with the garbage collector off (`launch`), and
every command turns it back on: a `sink` or `serve` left without it would never free a
reference cycle."""

import gc
import os
import subprocess
import sys
from pathlib import Path

import pytest

from customer_service import cli

RUN_AND_REPORT = """
import gc, sys
from customer_service import launch
sys.argv = ["customer-service", *sys.argv[1:]]
code = launch.main()
print("collector", "on" if gc.isenabled() else "off", "exit", code)
"""


@pytest.mark.parametrize("argv", [["migrate"], ["failed", "list"]], ids=["migrate", "failed"])
def test_a_command_runs_with_the_collector_on(tmp_path: Path, argv: list[str]) -> None:
    env = {**os.environ, "DATABASE_URL": f"sqlite+aiosqlite:///{tmp_path / 'x.db'}"}
    subprocess.run(
        [sys.executable, "-c", RUN_AND_REPORT, "migrate"], env=env, cwd=tmp_path, check=True
    )

    done = subprocess.run(
        [sys.executable, "-c", RUN_AND_REPORT, *argv],
        env=env,
        cwd=tmp_path,
        capture_output=True,
        text=True,
        check=True,
    )

    assert done.stdout.splitlines()[-1] == "collector on exit 0"


def test_serve_turns_the_collector_on_once_started() -> None:
    thresholds = gc.get_threshold()
    gc.disable()
    try:
        cli._tune_gc()
        assert gc.isenabled()
        assert gc.get_threshold() == cli.GC_THRESHOLDS
    finally:
        gc.unfreeze()
        gc.enable()
        gc.set_threshold(*thresholds)
