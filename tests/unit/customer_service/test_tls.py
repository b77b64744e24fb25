"""How the CRM is reached: CRM_CA_BUNDLE checked at start-up, proxies read from the
environment as urllib reads them (unit level: no network)."""

from pathlib import Path

import pytest
import trustme
from pydantic import ValidationError

from customer_service.config import Settings, describe_error
from customer_service.crm.tls import proxy_for, ssl_context


def test_a_missing_ca_bundle_stops_start_up_with_one_line(tmp_path: Path) -> None:
    with pytest.raises(ValidationError) as caught:
        Settings(crm_ca_bundle=str(tmp_path / "nope.pem"))
    line = describe_error(caught.value)
    assert line.startswith("invalid setting CRM_CA_BUNDLE:") and "no such file" in line
    assert "\n" not in line


def test_a_ca_bundle_that_is_not_pem_stops_start_up_with_one_line(tmp_path: Path) -> None:
    junk = tmp_path / "junk.pem"
    junk.write_text("not a certificate\n")
    with pytest.raises(ValidationError) as caught:
        Settings(crm_ca_bundle=str(junk))
    line = describe_error(caught.value)
    assert "CRM_CA_BUNDLE" in line and "not a PEM file" in line and "\n" not in line


def test_a_ca_bundle_is_trusted_besides_the_systems(tmp_path: Path) -> None:
    ca = trustme.CA()
    bundle = tmp_path / "ca.pem"
    ca.cert_pem.write_to_path(str(bundle))
    assert Settings(crm_ca_bundle=str(bundle)).crm_ca_bundle == str(bundle)
    with_bundle = ssl_context(str(bundle)).get_ca_certs()
    without = ssl_context().get_ca_certs()
    assert len(with_bundle) == len(without) + 1


@pytest.mark.parametrize(
    ("no_proxy", "url", "proxied"),
    [
        ("", "https://crm.example.com", True),
        ("example.com", "https://crm.example.com", False),
        (".example.com", "https://crm.example.com:8443", False),
        ("other.org, crm.example.com:8443", "https://crm.example.com", True),  # port differs
        ("crm.example.com:443", "https://crm.example.com", False),  # the scheme's port
        ("*", "https://crm.example.com", False),
        ("ample.com", "https://crm.example.com", True),  # a suffix, not a domain
    ],
)
def test_no_proxy_names_hosts_and_domains(
    monkeypatch: pytest.MonkeyPatch, no_proxy: str, url: str, proxied: bool
) -> None:
    for name in ("http_proxy", "https_proxy", "no_proxy", "all_proxy"):
        monkeypatch.delenv(name, raising=False)
        monkeypatch.delenv(name.upper(), raising=False)
    monkeypatch.setenv("HTTPS_PROXY", "http://proxy.internal:3128")
    monkeypatch.setenv("NO_PROXY", no_proxy)
    assert proxy_for(url) == ("http://proxy.internal:3128" if proxied else None)


def test_no_proxy_setting_means_a_direct_connection(monkeypatch: pytest.MonkeyPatch) -> None:
    for name in ("http_proxy", "https_proxy", "no_proxy", "all_proxy"):
        monkeypatch.delenv(name, raising=False)
        monkeypatch.delenv(name.upper(), raising=False)
    assert proxy_for("https://crm.example.com") is None
