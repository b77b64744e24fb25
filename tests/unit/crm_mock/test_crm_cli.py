"""The `crm-mock` command's start-up paths that need no server."""

import json
import logging
from pathlib import Path

import pytest

from crm_mock.cli import main
from crm_mock.config import LogFormat
from crm_mock.logging_config import JsonFormatter, configure_logging


@pytest.fixture(autouse=True)
def clean_environment(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    for name in ("PORT", "HOST", "CRM_DATABASE_URL", "LOG_FORMAT"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.chdir(tmp_path)


def test_bad_setting_prints_one_line_and_exits_2(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setenv("PORT", "70000")

    status = main(["serve"])

    err = capsys.readouterr().err
    assert status == 2
    assert err == "crm-mock: invalid setting PORT: Input should be less than or equal to 65535\n"


def test_dlq_list_is_empty_and_replay_of_an_unknown_letter_exits_1(
    capsys: pytest.CaptureFixture[str],
) -> None:
    assert main(["dlq", "list"]) == 0
    assert capsys.readouterr().out == ""

    status = main(["dlq", "replay", "7"])

    assert status == 1
    assert capsys.readouterr().err.endswith("no open dead letter 7\n")


def test_dlq_replay_needs_an_id_or_all(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as exited:
        main(["dlq", "replay"])

    assert exited.value.code == 2
    assert "one of the arguments id --all is required" in capsys.readouterr().err


def test_unknown_command_is_a_usage_error(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as exited:
        main(["dance"])

    assert exited.value.code == 2
    assert "invalid choice" in capsys.readouterr().err


def test_json_log_format_emits_one_object_per_line() -> None:
    record = logging.LogRecord("crm_mock.test", logging.WARNING, __file__, 1, "a %s", ("b",), None)

    line = JsonFormatter().format(record)

    assert "\n" not in line
    entry = json.loads(line)
    assert entry["level"] == "WARNING"
    assert entry["logger"] == "crm_mock.test"
    assert entry["message"] == "a b"
    assert entry["time"].endswith("+00:00")


def test_configure_logging_routes_uvicorn_to_the_root_handler() -> None:
    root = logging.getLogger()
    saved_handlers, saved_level = root.handlers[:], root.level
    try:
        configure_logging(LogFormat.JSON)

        assert len(root.handlers) == 1
        assert isinstance(root.handlers[0].formatter, JsonFormatter)
        assert logging.getLogger("uvicorn.access").handlers == []
        assert logging.getLogger("uvicorn.access").propagate is True
    finally:
        root.handlers[:] = saved_handlers
        root.setLevel(saved_level)
