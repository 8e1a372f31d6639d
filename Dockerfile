# One image for every gdx process: `docker run gdx serve <service>`, `gdx topics apply`, any gdx command.
# Used by docker-compose.yml (built once, run as topics + five services).
FROM python:3.11-slim

ENV PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    GDX_RUN_DIR=/var/lib/gdx \
    GDX_METRICS_HOST=0.0.0.0

WORKDIR /app

# jemalloc: `gdx serve index` preloads it (GDX_INDEX_ALLOCATOR); glibc's heap fragments under its load
RUN apt-get update -qq \
    && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends libjemalloc2 \
    && rm -rf /var/lib/apt/lists/*

# Dependencies first, from pyproject.toml alone, so code changes do not reinstall them. Every pinned
# dependency (pysam, crc32c, fastavro, cryptography) has a manylinux wheel for CPython 3.11: no
# compiler is needed.
COPY pyproject.toml README* ./
RUN mkdir services && touch services/__init__.py \
    && pip install -e . \
    && rm -rf services gdx.egg-info

# Editable install: gdx finds schemas/ and its other data next to its code (settings.REPO_ROOT),
# exactly as in a checkout.
COPY . .
RUN pip install --no-deps -e . \
    && useradd --system --uid 10001 --home-dir /var/lib/gdx --shell /usr/sbin/nologin gdx \
    && mkdir -p /var/lib/gdx \
    && chown gdx:gdx /var/lib/gdx

USER gdx
# Runtime state (consumer state, index, keys); docker-compose.yml mounts a named volume here.
VOLUME ["/var/lib/gdx"]
# Metrics and /health of the services (9101-9105) and of publish's feed worker (9106), Beacon API (5050),
# index query API (5060).
EXPOSE 9101 9102 9103 9104 9105 9106 5050 5060

ENTRYPOINT ["gdx"]
CMD ["--help"]
