# syntax=docker/dockerfile:1
# mirrorpool: build the wheel and its dependencies in one stage, run them in a slim one.
FROM python:3.11-slim-bookworm AS build
WORKDIR /src
RUN python -m venv /opt/mirrorpool
COPY pyproject.toml README.md ./
COPY app ./app
RUN /opt/mirrorpool/bin/pip install --no-cache-dir .

FROM python:3.11-slim-bookworm
RUN useradd --system --uid 10001 --no-create-home mirrorpool
COPY --from=build /opt/mirrorpool /opt/mirrorpool
ENV PATH=/opt/mirrorpool/bin:$PATH \
    PYTHONUNBUFFERED=1 \
    MIRRORPOOL_HOST=0.0.0.0 \
    MIRRORPOOL_LOG_FORMAT=json \
    MIRRORPOOL_PORT=8000
USER 10001
EXPOSE 8000
HEALTHCHECK --interval=10s --timeout=3s --start-period=10s --retries=3 \
    CMD ["python", "-c", "import urllib.request,sys; sys.exit(urllib.request.urlopen('http://127.0.0.1:8000/health/live', timeout=2).status != 200)"]
# SIGTERM: in-flight requests finish (MIRRORPOOL_SHUTDOWN_TIMEOUT), then the pools close.
STOPSIGNAL SIGTERM
ENTRYPOINT ["mirrorpool"]
CMD ["serve"]
