import json
import logging

import pytest

from customer_service.config import LogFormat
from customer_service.logs import configure_logging


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
