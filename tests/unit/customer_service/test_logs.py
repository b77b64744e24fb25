import json
import logging

import pytest

from customer_service.config import LogFormat
from customer_service.logs import configure_logging
from customer_service.request_id import accept_or_make, current_request_id


def test_json_log_format_writes_one_object_per_line(capsys: pytest.CaptureFixture[str]) -> None:
    configure_logging(LogFormat.JSON)
    try:
        logging.getLogger("customer_service.test").warning("request %s failed", 7)
    finally:
        logging.getLogger().handlers.clear()
    line = capsys.readouterr().err.strip()
    entry = json.loads(line)
    assert entry["level"] == "WARNING"
    assert entry["message"] == "request 7 failed"
    assert entry["logger"] == "customer_service.test"
    assert entry["app"] == "customer-service"


def test_log_lines_name_the_current_request_id(capsys: pytest.CaptureFixture[str]) -> None:
    configure_logging(LogFormat.TEXT)
    token = current_request_id.set("req-42")
    try:
        logging.getLogger("customer_service.test").warning("inside")
    finally:
        current_request_id.reset(token)
    try:
        logging.getLogger("customer_service.test").warning("outside")
    finally:
        logging.getLogger().handlers.clear()
    inside, outside = capsys.readouterr().err.strip().splitlines()
    assert "[req-42] customer_service.test: inside" in inside
    assert "[-] customer_service.test: outside" in outside


def test_json_log_lines_carry_request_id(capsys: pytest.CaptureFixture[str]) -> None:
    configure_logging(LogFormat.JSON)
    token = current_request_id.set("req-43")
    try:
        logging.getLogger("customer_service.test").warning("inside")
    finally:
        current_request_id.reset(token)
        logging.getLogger().handlers.clear()
    assert json.loads(capsys.readouterr().err)["requestId"] == "req-43"


def test_a_plain_request_id_is_kept_and_anything_else_replaced() -> None:
    assert accept_or_make("abc-123") == "abc-123"
    for bad in (None, "", "x" * 129, "a b", "évil", "line\nbreak"):
        made = accept_or_make(bad)
        assert made != bad and len(made) == 32, bad
