#!/bin/bash
# Runs once, when the pgdata volume is first initialised: the MLflow backend database next to
# the Optuna one (POSTGRES_DB), owned by the same user.
set -euo pipefail
psql -v ON_ERROR_STOP=1 --username "$POSTGRES_USER" --dbname "$POSTGRES_DB" \
    -c "CREATE DATABASE \"${MLFLOW_DB:-mlflow}\" OWNER \"$POSTGRES_USER\""
