# leanhpo container, CPU by default. First version: the container-hardening issue adds the CUDA
# variant's tests, a compose file and a non-root user.
#   docker build -t leanhpo:cpu .
#   docker build --build-arg TORCH_INDEX=https://download.pytorch.org/whl/cu128 -t leanhpo:cuda .
# Debian bookworm's python3 is 3.11, the version the lock file was made with.
FROM debian:bookworm-slim

ARG TORCH_INDEX=https://download.pytorch.org/whl/cpu
ENV PYTHONDONTWRITEBYTECODE=1 \
    PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    MLFLOW_DISABLE_TELEMETRY=true \
    DO_NOT_TRACK=true \
    VIRTUAL_ENV=/opt/venv \
    NLTK_DATA=/opt/nltk_data \
    PATH=/opt/venv/bin:$PATH

RUN apt-get update \
    && apt-get install -y --no-install-recommends python3 python3-venv python3-dev build-essential ca-certificates make \
    && rm -rf /var/lib/apt/lists/* \
    && python3 -m venv /opt/venv

WORKDIR /app
# Dependencies first, so that code changes do not reinstall them.
COPY requirements.lock ./
RUN pip install --extra-index-url "${TORCH_INDEX}" -r requirements.lock

COPY pyproject.toml README.md ./
COPY src ./src
RUN pip install --no-deps --no-build-isolation -e . \
    && python -m leanhpo.data.nltk_data --dest /opt/nltk_data
COPY Snakefile config.yaml Makefile ./
COPY rules ./rules
COPY scripts ./scripts
COPY envs ./envs
COPY docs ./docs
COPY tests ./tests

VOLUME ["/app/experiments"]
CMD ["snakemake", "--cores", "1", "--rerun-incomplete"]
