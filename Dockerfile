# syntax=docker/dockerfile:1
# mirrorpool's image. The build stage installs the locked, hash-checked dependencies and the
# mirrorpool wheel into a virtualenv; the runtime stage gets that virtualenv and nothing else
# (no pip, no compiler, no test or lint tools).
#
#   docker build -t mirrorpool .
#   docker run -e MIRRORPOOL_PRIMARY_DSN=... -e MIRRORPOOL_API_KEYS=... -p 8000:8000 mirrorpool
#
# Both stages start from the same image: the virtualenv's python is a link to the base's.
ARG PYTHON_IMAGE=python:3.11-slim-bookworm

FROM ${PYTHON_IMAGE} AS build
ENV PIP_DISABLE_PIP_VERSION_CHECK=1 \
    PIP_NO_CACHE_DIR=1
WORKDIR /src
# setuptools (the build backend) comes from a hashed lock too, so nothing unpinned runs here.
COPY requirements-build.lock requirements.lock ./
RUN pip install --no-cache-dir --require-hashes -r requirements-build.lock \
    && python -m venv --without-pip /opt/mirrorpool \
    && pip --python /opt/mirrorpool/bin/python install --no-cache-dir --require-hashes \
        -r requirements.lock
# The dependencies are a layer of their own: a change to app/ rebuilds only what follows.
COPY pyproject.toml README.md ./
COPY app ./app
RUN pip wheel --no-cache-dir --no-deps --no-build-isolation --wheel-dir /wheels . \
    && pip --python /opt/mirrorpool/bin/python install --no-cache-dir --no-deps /wheels/*.whl

FROM ${PYTHON_IMAGE}
# The base image's pip, setuptools and wheel are installers, not something a server needs;
# the service runs as an unprivileged user with a fixed uid (Kubernetes' runAsUser matches it).
RUN python -m pip uninstall --yes --quiet pip setuptools wheel \
    && useradd --system --uid 10001 --user-group --no-create-home \
        --home-dir /nonexistent --shell /usr/sbin/nologin mirrorpool \
    && mkdir -p /srv/mirrorpool/migrations /srv/mirrorpool/queries
COPY --from=build /opt/mirrorpool /opt/mirrorpool
WORKDIR /srv/mirrorpool
# Mount or COPY your migrations/ and queries/ folders into /srv/mirrorpool.
# MIRRORPOOL_WORKERS sets the uvicorn worker processes (one per pod is the usual choice).
ENV PATH=/opt/mirrorpool/bin:$PATH \
    PYTHONUNBUFFERED=1 \
    PYTHONDONTWRITEBYTECODE=1 \
    MIRRORPOOL_HOST=0.0.0.0 \
    MIRRORPOOL_PORT=8000 \
    MIRRORPOOL_WORKERS=1 \
    MIRRORPOOL_LOG_FORMAT=json \
    MIRRORPOOL_MIGRATIONS_DIR=/srv/mirrorpool/migrations \
    MIRRORPOOL_QUERIES_DIR=/srv/mirrorpool/queries
USER 10001:10001
EXPOSE 8000
# Liveness only: a database outage must not get a healthy process restarted. The port is read
# from the environment, so MIRRORPOOL_PORT can be changed without breaking the check.
HEALTHCHECK --interval=10s --timeout=3s --start-period=30s --retries=3 \
    CMD ["python", "-c", "import os, sys, urllib.request; port = os.environ.get('MIRRORPOOL_PORT', '8000'); sys.exit(urllib.request.urlopen(f'http://127.0.0.1:{port}/health/live', timeout=2).status != 200)"]
# Exec form, no shell in between: SIGTERM reaches mirrorpool itself, which stops accepting,
# lets in-flight requests finish (MIRRORPOOL_SHUTDOWN_TIMEOUT), then closes the pools.
STOPSIGNAL SIGTERM
ENTRYPOINT ["mirrorpool"]
CMD ["serve"]
