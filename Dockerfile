# syntax=docker/dockerfile:1
# One image for every f2pipe service: `docker run f2pipe <command>` (ENTRYPOINT is the CLI:
# migrate, seed-demo, certgen, bridge, processor, sink, simulator, ...). docker-compose.yml
# builds it once and runs one command per service.

ARG PYTHON_IMAGE=python:3.11-slim

# --- console: the operator console's front-end libraries, from the npm registry at the
# versions its package-lock.json pins, copied into the api package (no CDN at run time) ----
FROM node:20-slim AS console
WORKDIR /src
COPY scripts/build-console.sh scripts/
COPY services/api/console/package.json services/api/console/package-lock.json services/api/console/
RUN scripts/build-console.sh --production

# --- build: resolve the locked dependencies and install the workspace into /opt/f2pipe ------
FROM ${PYTHON_IMAGE} AS build
ENV UV_COMPILE_BYTECODE=1 \
    UV_LINK_MODE=copy \
    UV_PYTHON_DOWNLOADS=never \
    UV_PYTHON=/usr/local/bin/python3.11 \
    UV_PROJECT_ENVIRONMENT=/opt/f2pipe \
    PIP_DISABLE_PIP_VERSION_CHECK=1
RUN pip install --no-cache-dir "uv>=0.5,<1"
WORKDIR /src

# Dependencies first (only the lock file and the project files): this layer survives edits
# to the code.
COPY pyproject.toml uv.lock README.md ./
COPY shared/pyproject.toml shared/
COPY services/certgen/pyproject.toml services/certgen/
COPY services/api/pyproject.toml services/api/
COPY services/simulator/pyproject.toml services/simulator/
COPY services/bridge/pyproject.toml services/bridge/
COPY services/processor/pyproject.toml services/processor/
COPY services/sink/pyproject.toml services/sink/
COPY services/mqtt_broker/pyproject.toml services/mqtt_broker/
# The development tooling is a workspace member, so uv needs its project file to read the
# lock; `--package f2pipe --no-dev` installs neither it nor anything only it needs.
COPY devtools/pyproject.toml devtools/
RUN --mount=type=cache,target=/root/.cache/uv \
    uv sync --frozen --package f2pipe --no-dev --no-install-workspace

# Then our own packages, installed as wheels (no editable links back to /src). The
# migrations (f2pipe/migrations/) and Mosquitto's configuration travel as package data.
COPY f2pipe/ f2pipe/
COPY shared/ shared/
COPY services/ services/
COPY --from=console /src/services/api/f2pipe_api/console/vendor/ services/api/f2pipe_api/console/vendor/
RUN --mount=type=cache,target=/root/.cache/uv \
    uv sync --frozen --package f2pipe --no-dev --no-editable \
    && /opt/f2pipe/bin/f2pipe --help > /dev/null

# --- runtime: slim Python, the virtual environment, the migrations, a non-root user ---------
FROM ${PYTHON_IMAGE} AS runtime
LABEL org.opencontainers.image.title="f2pipe" \
      org.opencontainers.image.description="F2 Smart Controllers -> mTLS MQTT -> Kafka -> TimescaleDB" \
      org.opencontainers.image.licenses="Apache-2.0"

# uid/gid 10001: not 1883 (Mosquitto's), so the broker can never read the CA key, which is
# mode 0600 and owned by this user. The state directories exist in the image with the right
# owner, so named volumes mounted on them start out owned by f2pipe too.
RUN groupadd --system --gid 10001 f2pipe \
    && useradd --system --uid 10001 --gid f2pipe --home-dir /var/lib/f2pipe \
       --shell /usr/sbin/nologin f2pipe \
    && mkdir -p /var/lib/f2pipe/ca /var/lib/f2pipe/issued /var/lib/f2pipe/demo \
       /var/lib/f2pipe/simulator /var/lib/f2pipe/processor \
    && chown -R f2pipe:f2pipe /var/lib/f2pipe \
    && chmod 0755 /var/lib/f2pipe/ca /var/lib/f2pipe/issued \
    && chmod 0700 /var/lib/f2pipe/demo /var/lib/f2pipe/simulator /var/lib/f2pipe/processor

COPY --from=build /opt/f2pipe /opt/f2pipe

ENV PATH=/opt/f2pipe/bin:$PATH \
    PYTHONUNBUFFERED=1 \
    PYTHONDONTWRITEBYTECODE=1 \
    CA_DIR=/var/lib/f2pipe/ca \
    ISSUED_DIR=/var/lib/f2pipe/issued \
    MQTT_CA_FILE=/var/lib/f2pipe/ca/ca.crt \
    BRIDGE_CERT_FILE=/var/lib/f2pipe/issued/bridge.crt \
    BRIDGE_KEY_FILE=/var/lib/f2pipe/issued/bridge.key \
    SIMULATOR_STATE_DIR=/var/lib/f2pipe/simulator \
    PROCESSOR_DATA_DIR=/var/lib/f2pipe/processor

WORKDIR /var/lib/f2pipe
USER 10001:10001
ENTRYPOINT ["f2pipe"]
CMD ["--help"]
