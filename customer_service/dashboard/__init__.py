"""The operator's page at /dashboard: server-rendered (Jinja2), a little plain JavaScript."""
