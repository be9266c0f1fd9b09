# leanhpo container: CPU by default. `make build` runs the right build for this machine.
#
#   docker build -t leanhpo:cpu .
#   docker build --build-context wheels=/opt/wheels -t leanhpo:cpu .
#       wheels: a folder holding the torch wheel (pip's find-links folder). With it, torch is
#       installed from there and the PyTorch index is never asked; `make build` passes it when
#       pip has a find-links folder.
#   CUDA variant: torch from the CUDA index that matches the host driver (cu126, cu128, ...):
#   docker build --build-arg TORCH_INDEX=https://download.pytorch.org/whl/cu128 -t leanhpo:cuda .
#       and run it with `docker run --gpus all ...` (podman: `--device nvidia.com/gpu=all`).
#
# Other build args, for machines where pip reaches PyPI only through a mirror or a proxy (values
# are used by the deps and builder stages only, not part of the image; never put credentials in
# them, use a netrc secret instead): PIP_INDEX_URL, PIP_EXTRA_INDEX_URL, PIP_CERT (a CA bundle
# path inside the build; the base image's extra CAs end up in the default one), and Docker's
# predefined HTTP_PROXY/HTTPS_PROXY/NO_PROXY.
#
# Stages: `deps` makes /opt/venv from requirements.lock; `builder` builds the project's wheel
# and fetches the NLTK corpora into /opt/nltk_data; the runtime copies the venv, the corpora and
# the workflow files and installs the wheel, so compilers, caches and apt lists stay behind. A
# source change rebuilds only the small layers: the 2.3 GB venv layer is reused. Debian
# bookworm's python3 is 3.11, the version the lock file was made with; the venv works in each
# stage because python3 has the same path in each.

# The default (empty) wheels context; `--build-context wheels=DIR` replaces it.
FROM scratch AS wheels

FROM debian:bookworm-slim AS deps
ARG TORCH_INDEX=https://download.pytorch.org/whl/cpu
# Pins of requirements.lock replaced in the image, "name==version ...". The lock was made with
# Python 3.11.7 and bookworm's python3 is 3.11.2: soupsieve 4.1.3 needs Python >= 3.11.5, and
# 2.10 is its last release for 3.11.2 (only beautifulsoup4 uses it).
ARG LOCK_OVERRIDES="soupsieve==2.10"
ARG PIP_INDEX_URL=
ARG PIP_EXTRA_INDEX_URL=
ARG PIP_CERT=/etc/ssl/certs/ca-certificates.crt
ENV PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    PIP_DEFAULT_TIMEOUT=180 \
    PYTHONDONTWRITEBYTECODE=1 \
    PATH=/opt/venv/bin:$PATH

# The apt lists stay in this stage: the NLTK step's offline route downloads Debian packages.
RUN apt-get update \
    && apt-get install -y --no-install-recommends \
       python3 python3-venv python3-dev build-essential ca-certificates \
    && python3 -m venv /opt/venv \
    && pip install --quiet "pip>=24"

# Dependencies first, so that code changes do not reinstall them. torch comes alone, from the
# wheels folder or TORCH_INDEX only, and is then pinned as installed (e.g. 2.13.0+cpu): PyPI's
# torch==2.13.0 is a multi-GB CUDA build, and this way pip can never pick it.
COPY requirements.lock /tmp/requirements.lock
RUN --mount=type=bind,from=wheels,target=/wheels \
    set -eu; \
    for pin in $LOCK_OVERRIDES; do sed -i "s/^${pin%%==*}==.*/$pin/" /tmp/requirements.lock; done; \
    torch=$(grep -E '^torch==' /tmp/requirements.lock); \
    if ls /wheels/torch-*.whl >/dev/null 2>&1; then \
        pip install --quiet --no-deps --no-index --find-links /wheels "$torch"; \
        links="--find-links /wheels"; \
    else \
        pip install --quiet --no-deps --index-url "$TORCH_INDEX" "$torch"; \
        links=""; \
    fi; \
    python -c "from importlib.metadata import version; print('torch==' + version('torch'))" \
        >/tmp/torch.txt; \
    cat /tmp/torch.txt; \
    pip install --quiet $links -r /tmp/requirements.lock -c /tmp/torch.txt

FROM deps AS builder
COPY pyproject.toml README.md /src/
COPY src /src/src
RUN pip wheel --quiet --no-deps --no-build-isolation --wheel-dir /dist /src \
    && pip install --quiet --no-deps /dist/leanhpo-*.whl \
    && python -m leanhpo.data.nltk_data --dest /opt/nltk_data

FROM debian:bookworm-slim AS runtime
ENV PYTHONDONTWRITEBYTECODE=1 \
    MLFLOW_DISABLE_TELEMETRY=true \
    DO_NOT_TRACK=true \
    TOKENIZERS_PARALLELISM=false \
    VIRTUAL_ENV=/opt/venv \
    NLTK_DATA=/opt/nltk_data \
    PATH=/opt/venv/bin:$PATH

RUN apt-get update \
    && apt-get install -y --no-install-recommends python3 ca-certificates \
    && rm -rf /var/lib/apt/lists/* /var/cache/apt/archives/*.deb \
    && useradd --uid 1000 --create-home --shell /bin/bash leanhpo

COPY --from=deps /opt/venv /opt/venv
COPY --from=builder /opt/nltk_data /opt/nltk_data
# COPY, not a bind mount: buildah leaves a bind mount's content out of the layer cache key, so a
# changed wheel was once installed from a cached layer holding the old one.
COPY --from=builder /dist /tmp/dist
RUN PIP_NO_CACHE_DIR=1 pip install --quiet --no-deps --disable-pip-version-check /tmp/dist/leanhpo-*.whl \
    && rm -rf /tmp/dist

WORKDIR /app
COPY Snakefile config.yaml ./
COPY rules ./rules
COPY scripts ./scripts
COPY envs ./envs
COPY overlays ./overlays
COPY profiles ./profiles
# Snakemake keeps its state in /app/.snakemake, so /app is writable for any user: the Makefile
# runs the container as the invoking user, so that experiments/ on the host stays theirs.
RUN mkdir -p /app/experiments \
    && chown leanhpo:leanhpo /app/experiments \
    && chmod 1777 /app /app/experiments

USER leanhpo
VOLUME ["/app/experiments"]
CMD ["snakemake", "--cores", "1", "--rerun-incomplete"]
