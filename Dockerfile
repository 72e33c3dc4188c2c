# One multi-stage Dockerfile for the four services, built from the repository root:
#   docker build --target registry -t msgin5g-registry .
# Each final stage is slim, runs as a non-root user and starts the service's console script.
ARG PYTHON_IMAGE=python:3.11-slim-bookworm

FROM ${PYTHON_IMAGE} AS build
ENV PIP_DISABLE_PIP_VERSION_CHECK=1 PIP_NO_CACHE_DIR=1
WORKDIR /src
COPY requirements/constraints.txt requirements/constraints.txt
COPY packages packages
COPY services services
RUN python -m venv /opt/msgin5g \
 && /opt/msgin5g/bin/pip install -c requirements/constraints.txt setuptools wheel \
 && /opt/msgin5g/bin/pip install --no-build-isolation -c requirements/constraints.txt \
      ./packages/msgin5g-common ./services/registry ./services/router \
      ./services/coap-edge ./services/mqtt-edge

FROM ${PYTHON_IMAGE} AS runtime
RUN useradd --system --uid 10001 --home-dir /nonexistent --shell /usr/sbin/nologin msgin5g
COPY --from=build /opt/msgin5g /opt/msgin5g
ENV PATH=/opt/msgin5g/bin:$PATH PYTHONUNBUFFERED=1 PYTHONDONTWRITEBYTECODE=1
USER 10001

FROM runtime AS registry
EXPOSE 8080 50051
ENTRYPOINT ["msgin5g-registry"]

FROM runtime AS router
EXPOSE 50052
ENTRYPOINT ["msgin5g-router"]

FROM runtime AS coap-edge
EXPOSE 5683/udp 50053
ENTRYPOINT ["msgin5g-coap-edge"]

FROM runtime AS mqtt-edge
EXPOSE 50054
ENTRYPOINT ["msgin5g-mqtt-edge"]
