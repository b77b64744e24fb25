# One image for both apps (`customer-service` and `crm-mock` are console scripts of the
# package); docker-compose.yml picks the command. Installed the way `make run` installs
# it: pip, from pyproject.toml, nothing else.
FROM python:3.11-slim

ENV PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1

WORKDIR /src
COPY pyproject.toml README.md ./
COPY customer_service ./customer_service
COPY crm_mock ./crm_mock
RUN python -m pip install . \
    && useradd --create-home --uid 10001 --shell /usr/sbin/nologin app \
    && mkdir /data && chown app:app /data

USER app
WORKDIR /data
# Listen on every interface inside the container; each app's own PORT default applies.
ENV HOST=0.0.0.0
EXPOSE 8080 8081

# Both apps answer GET /health on their PORT (8080 unless set; the CRM mock sets 8081).
HEALTHCHECK --interval=10s --timeout=3s --start-period=15s --retries=3 \
    CMD python -c "import os, urllib.request; urllib.request.urlopen('http://127.0.0.1:%s/health' % os.environ.get('PORT', '8080'), timeout=2)"

CMD ["customer-service", "serve"]
