"""The OpenAPI document declares the headers the answers carry, not only their bodies."""

from customer_service.app import create_app
from customer_service.config import Settings


def test_answers_declare_request_id_location_etag_and_retry_after() -> None:
    paths = create_app(Settings(_env_file=None), run_scheduler=False).openapi()["paths"]  # type: ignore[call-arg]
    for operations in paths.values():
        for operation in operations.values():
            for answer in operation["responses"].values():
                assert "X-Request-ID" in answer["headers"]
    created = paths["/api/customers"]["post"]["responses"]["201"]["headers"]
    assert {"Location", "ETag"} <= set(created)
    assert "ETag" in paths["/api/customers/{customer_id}"]["get"]["responses"]["200"]["headers"]
    assert "Retry-After" in paths["/api/customers"]["get"]["responses"]["503"]["headers"]
