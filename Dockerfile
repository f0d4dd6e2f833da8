# One image for every autoopt service of docker-compose.yml: Ray head and GPU workers, the MLflow
# tracking server, optuna-dashboard and the client that submits studies.
#
# A client outside the stack (`ray://127.0.0.1:10001` from the host) must run the same Python
# minor version and the same Ray version as this image: keep PYTHON_VERSION / RAY_VERSION in
# step with the host's environment (`python -c "import ray, sys; print(ray.__version__, sys.version)"`).
ARG PYTHON_VERSION=3.11
FROM python:${PYTHON_VERSION}-slim

# TORCH_INDEX_URL: the default PyPI wheel of torch for Linux x86_64 bundles CUDA (GPU workers);
# use https://download.pytorch.org/whl/cpu for a small CPU-only image.
ARG TORCH_VERSION=2.13.0
ARG TORCH_INDEX_URL=https://pypi.org/simple
ARG RAY_VERSION=2.60.0

ENV PYTHONUNBUFFERED=1 \
    PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    RAY_USAGE_STATS_ENABLED=0

RUN apt-get update \
    && apt-get install -y --no-install-recommends curl libgomp1 \
    && rm -rf /var/lib/apt/lists/*

RUN pip install --index-url "${TORCH_INDEX_URL}" "torch==${TORCH_VERSION}"

WORKDIR /app
COPY pyproject.toml README.md ./
COPY autoopt ./autoopt
COPY tasks ./tasks
# mlflow[auth]: the basic-auth app the compose file's MLflow server runs
RUN pip install "ray[default,client]==${RAY_VERSION}" "optuna-dashboard>=0.16" "mlflow[auth]" . \
    && python -c "import autoopt, ray, mlflow, mlflow.server.auth, flask_wtf, optuna_dashboard, psycopg; print('autoopt image ok, ray', ray.__version__)"
COPY studies ./studies

# Non-root; Ray, MLflow and autoopt write under $HOME and /tmp only.
RUN useradd --create-home --uid 1000 autoopt && mkdir -p /mlartifacts && chown autoopt /mlartifacts
USER autoopt
ENV HOME=/home/autoopt AUTOOPT_RECOMMEND_DIR=/home/autoopt/.autoopt/recommend

CMD ["autoopt", "--help"]
