# The operator image: kopf, the Kubernetes asyncio client and prometheus-client only
# (torch is in the training extra, which this image never installs).
# Build from the repository root: docker build -t gaudi-operator:0.1.0 .
# BASE_IMAGE: any Debian-based Python 3.11 image with pip; hack/build-images.sh passes one
# made from Debian's packages (no registry there).
ARG BASE_IMAGE=python:3.11-slim-bookworm
FROM ${BASE_IMAGE} AS build
WORKDIR /src
COPY pyproject.toml README.md ./
COPY operator ./operator
COPY training-image/gaudi_train ./training-image/gaudi_train
COPY crds ./crds
# Wheels for the project and its `operator` extra, so the list lives in pyproject.toml only.
RUN pip wheel --no-cache-dir --wheel-dir /wheels ".[operator]"

FROM ${BASE_IMAGE}
# Debian already has a group named operator (gid 37): the user gets its own name and group.
RUN groupadd --gid 10001 gaudi-operator \
 && useradd --uid 10001 --gid 10001 --no-create-home --shell /usr/sbin/nologin gaudi-operator
COPY --from=build /wheels /wheels
# The wheel folder built above is the pin: --no-index installs nothing else.
# hadolint ignore=DL3013
RUN pip install --no-cache-dir --no-index --find-links /wheels "gaudi-scale-starter[operator]" \
 && rm -rf /wheels
USER 10001
EXPOSE 8080 9090
ENTRYPOINT ["gaudi3", "operator"]
CMD ["--metrics-port", "9090", "--health-port", "8080", "--log-format", "json"]
