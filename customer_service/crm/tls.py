"""How the CRM is reached: whom to trust for its certificate, and which proxy to go through.

- **Trust**: the system's roots as OpenSSL finds them (so `SSL_CERT_FILE` and
  `SSL_CERT_DIR` work as for any program on the machine), plus `CRM_CA_BUNDLE`, a PEM file
  of CAs trusted for the CRM alone (a company's own CA in front of it).
- **Proxy**: `HTTPS_PROXY` / `HTTP_PROXY` (by the CRM URL's scheme) and `NO_PROXY`, read
  once at start-up for the one CRM origin, as urllib reads them; an HTTPS CRM is reached
  through the proxy with `CONNECT`, so the TLS session is still end to end.
"""

import ssl
import urllib.request
from urllib.parse import urlsplit


def load_ca_bundle(context: ssl.SSLContext, path: str) -> None:
    """Trust the CAs of the PEM file `path` too; a `ValueError` of one line when it cannot."""
    try:
        context.load_verify_locations(cafile=path)
    except FileNotFoundError:
        raise ValueError(f"no such file: {path}") from None
    except (ssl.SSLError, OSError) as exc:
        raise ValueError(f"{path} is not a PEM file of CA certificates ({exc})") from None


def ssl_context(ca_bundle: str = "") -> ssl.SSLContext:
    """The TLS context of the CRM calls: verify the certificate and the host name."""
    context = ssl.create_default_context()
    if ca_bundle:
        load_ca_bundle(context, ca_bundle)
    return context


def proxy_for(url: str) -> str | None:
    """The proxy the environment names for `url` (None: connect directly)."""
    parts = urlsplit(url)
    proxy = urllib.request.getproxies_environment().get(parts.scheme)
    port = parts.port or (443 if parts.scheme == "https" else 80)
    if not proxy or _bypassed(parts.hostname or "", port):
        return None
    return proxy


def _bypassed(host: str, port: int) -> bool:
    """Does `NO_PROXY` (or `no_proxy`) name this host: `*`, the host itself, or a domain
    it is in (`example.com` and `.example.com` both cover `crm.example.com`), with or
    without the port?"""
    listed = urllib.request.getproxies_environment().get("no", "")
    host = host.lower()
    for entry in (e.strip().lower() for e in listed.split(",")):
        if entry == "*":
            return True
        name, _, entry_port = entry.rpartition(":") if entry.count(":") == 1 else (entry, "", "")
        if entry_port and entry_port != str(port):
            continue
        name = name.lstrip(".")
        if name and (host == name or host.endswith("." + name)):
            return True
    return False
