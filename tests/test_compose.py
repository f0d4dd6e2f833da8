"""docker-compose.yml, .env.example and Dockerfile are consistent with autoopt's configuration.

No Docker engine runs on CI, so the compose file is parsed (PyYAML) and interpolated with the
variables of ``.env.example`` the way ``docker compose`` does (``${VAR}``, ``${VAR:-default}``,
``${VAR:?error}``, ``$$``); then services, start order, ports, environment names, URLs and
volumes are checked against each other and against the variables autoopt reads.
``tests/test_cluster.py`` runs the same topology as processes.
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
import yaml
from sqlalchemy.engine import make_url

from local_cluster import CLIENT_ENV, HEAD_ENV, MLFLOW_ALLOWED_HOSTS

ROOT = Path(__file__).resolve().parents[1]
COMPOSE = ROOT / "docker-compose.yml"
ENV_EXAMPLE = ROOT / ".env.example"
SERVICES = {"postgres", "mlflow", "ray-head", "ray-worker", "optuna-dashboard", "autoopt"}
#: A .env with only the required secrets, each a distinct value a test can look for.
SECRETS = {"POSTGRES_PASSWORD": "pg-s3cret", "RAY_AUTH_TOKEN": "ray-t0ken", "MLFLOW_ADMIN_PASSWORD": "mlflow-s3cret",
           "MLFLOW_SECRET_KEY": "csrf-k3y"}
#: MLflow's own client variables (the basic-auth login), set next to autoopt's.
MLFLOW_CLIENT_ENV = ("MLFLOW_TRACKING_USERNAME", "MLFLOW_TRACKING_PASSWORD")
REQUIRE_SECRETS = ROOT / "docker" / "require-secrets.sh"
_VAR = re.compile(r"\$\$|\$\{([A-Za-z_][A-Za-z0-9_]*)(?:(:?[-?])([^}]*))?\}|\$([A-Za-z_][A-Za-z0-9_]*)")


def read_env_file(path: Path) -> dict[str, str]:
    """A .env file as compose reads it (KEY=VALUE lines; ${VAR} refers to earlier keys)."""
    env: dict[str, str] = {}
    for line in path.read_text().splitlines():
        line = line.strip()
        if not line or line.startswith("#"):
            continue
        key, _, value = line.partition("=")
        env[key.strip()] = interpolate(value.strip(), env)
    return env


def interpolate(text: str, env: dict[str, str], used: set[str] | None = None) -> str:
    def sub(m: re.Match) -> str:
        if m.group(0) == "$$":
            return "$"
        name = m.group(1) or m.group(4)
        if used is not None:
            used.add(name)
        op, arg = m.group(2), m.group(3)
        value = env.get(name)
        if op in (":-", ":?") and not value or op in ("-", "?") and value is None:
            if op.endswith("?"):
                raise KeyError(f"{name}: {arg}")
            return interpolate(arg or "", env, used)
        return value or ""

    return _VAR.sub(sub, text)


def resolve(node: Any, env: dict[str, str], used: set[str] | None = None) -> Any:
    if isinstance(node, str):
        return interpolate(node, env, used)
    if isinstance(node, list):
        return [resolve(v, env, used) for v in node]
    if isinstance(node, dict):
        return {k: resolve(v, env, used) for k, v in node.items()}
    return node


@pytest.fixture(scope="module")
def raw() -> dict[str, Any]:
    return yaml.safe_load(COMPOSE.read_text())


@pytest.fixture(scope="module")
def env() -> dict[str, str]:
    return read_env_file(ENV_EXAMPLE)


@pytest.fixture(scope="module")
def compose(raw, env) -> dict[str, Any]:
    return resolve(raw, env)


def environment(service: dict[str, Any]) -> dict[str, str]:
    e = service.get("environment") or {}
    if isinstance(e, list):
        e = dict(item.split("=", 1) for item in e)
    return {k: str(v) for k, v in e.items()}


def flag(command: list[str], name: str) -> str:
    """``--name=value`` or ``--name value`` from a command list."""
    for i, arg in enumerate(command):
        if arg.startswith(name + "="):
            return arg.split("=", 1)[1]
        if arg == name:
            return command[i + 1]
    raise AssertionError(f"{name} not in {command}")


def autoopt_config_vars() -> set[str]:
    """Every AUTOOPT_* variable name autoopt's code reads."""
    names: set[str] = set()
    for path in (ROOT / "autoopt").rglob("*.py"):
        names |= set(re.findall(r"AUTOOPT_[A-Z0-9_]+", path.read_text()))
    return names


def test_services_and_start_order(compose):
    services = compose["services"]
    assert set(services) == SERVICES
    for name, svc in services.items():
        for dep, cond in (svc.get("depends_on") or {}).items():
            assert dep in services, f"{name} depends on unknown {dep}"
            assert cond["condition"] == "service_healthy", f"{name} -> {dep}"
            assert "healthcheck" in services[dep], f"{name} waits for {dep} to be healthy, which has no healthcheck"
    # the order compose starts them in: a topological order exists and puts the database first
    order: list[str] = []
    pending = dict(services)
    while pending:
        ready = [n for n, s in pending.items() if set(s.get("depends_on") or {}) <= set(order)]
        assert ready, f"depends_on cycle among {sorted(pending)}"
        order.extend(sorted(ready))
        for n in ready:
            del pending[n]
    assert order[0] == "postgres"
    deps = lambda n: set(services[n].get("depends_on") or {})  # noqa: E731
    assert "postgres" in deps("mlflow") and "postgres" in deps("optuna-dashboard")
    assert {"ray-head", "mlflow"} <= deps("ray-worker") and {"ray-head", "mlflow"} <= deps("autoopt")


def test_published_ports_are_bound_to_localhost_by_default(raw, compose):
    published = {n: s.get("ports", []) for n, s in compose["services"].items()}
    assert published["ray-worker"] == [] and "container_name" not in compose["services"]["ray-worker"], \
        "ray-worker must be scalable with --scale: no host ports, no container_name"
    assert published["autoopt"] == []
    defaults = resolve(raw, SECRETS)  # a .env with only the secrets
    for cfg in (compose, defaults):
        for name, svc in cfg["services"].items():
            for port in svc.get("ports", []):
                assert isinstance(port, str) and port.startswith("127.0.0.1:"), f"{name}: {port}"
    host_ports = {n: {int(p.split(":")[2]): int(p.split(":")[1]) for p in ps} for n, ps in published.items()}
    assert host_ports["mlflow"] == {5000: 5000}
    assert host_ports["ray-head"] == {8265: 8265, 10001: 10001}
    assert host_ports["optuna-dashboard"] == {}, "optuna-dashboard has no login: it must stay internal"
    assert host_ports["postgres"] == {5432: 5432}


def test_env_example_defines_every_variable_and_holds_no_secret(raw, env):
    used: set[str] = set()
    resolve(raw, env, used)
    assert used <= set(env), f"not in .env.example: {sorted(used - set(env))}"
    for key, value in env.items():
        if re.search(r"PASSWORD|TOKEN|SECRET", key):
            assert value == "change-me", f"{key} in .env.example must be a placeholder"
    for key in SECRETS:  # compose refuses to start without each of them
        with pytest.raises(KeyError, match=key):
            resolve(raw, {k: v for k, v in SECRETS.items() if k != key})
    ignored = (ROOT / ".gitignore").read_text().splitlines()
    assert ".env" in ignored, ".env (real passwords) must be git-ignored"


def test_client_environment_matches_autoopt_configuration(compose, env):
    services = compose["services"]
    client = environment(services["autoopt"])
    known = autoopt_config_vars()
    for key in client:
        assert key in known or key.startswith("RAY_") or key in MLFLOW_CLIENT_ENV, f"autoopt does not read {key}"
    assert set(CLIENT_ENV) <= set(client)
    pg = environment(services["postgres"])

    storage = make_url(client["AUTOOPT_STORAGE"])
    assert storage.get_backend_name() == "postgresql" and storage.host == "postgres"
    assert storage.port == 5432 and storage.database == pg["POSTGRES_DB"]
    assert (storage.username, storage.password) == (pg["POSTGRES_USER"], pg["POSTGRES_PASSWORD"])

    mlflow_env = environment(services["mlflow"])
    for name in ("autoopt", "ray-worker"):  # trials log to MLflow from the workers: they log in too
        e = environment(services[name])
        assert (e["MLFLOW_TRACKING_USERNAME"], e["MLFLOW_TRACKING_PASSWORD"]) == (
            mlflow_env["MLFLOW_AUTH_ADMIN_USERNAME"], mlflow_env["MLFLOW_AUTH_ADMIN_PASSWORD"]), name
    assert (env["MLFLOW_TRACKING_USERNAME"], env["MLFLOW_TRACKING_PASSWORD"]) == (
        mlflow_env["MLFLOW_AUTH_ADMIN_USERNAME"], mlflow_env["MLFLOW_AUTH_ADMIN_PASSWORD"])

    tracking = client["AUTOOPT_TRACKING_URI"]
    assert tracking == f"http://mlflow:{flag(services['mlflow']['command'], '--port')}"
    head = services["ray-head"]["command"]
    assert client["AUTOOPT_RAY_ADDRESS"] == f"ray://ray-head:{flag(head, '--ray-client-server-port')}"
    assert flag(services["ray-worker"]["command"], "--address") == f"ray-head:{flag(head, '--port')}"

    # the same settings for a client on the host, through the published ports
    host = make_url(env["AUTOOPT_STORAGE"])
    assert (host.host, host.port, host.database) == ("127.0.0.1", int(env["POSTGRES_PORT"]), pg["POSTGRES_DB"])
    assert host.password == pg["POSTGRES_PASSWORD"]
    assert env["AUTOOPT_TRACKING_URI"] == f"http://127.0.0.1:{env['MLFLOW_PORT']}"
    assert env["AUTOOPT_RAY_ADDRESS"] == f"ray://127.0.0.1:{env['RAY_CLIENT_PORT']}"
    for key in ("AUTOOPT_STORAGE", "AUTOOPT_TRACKING_URI", "AUTOOPT_RAY_ADDRESS"):
        assert key in known
    # `run --submit`: the job API is the head's dashboard, and the driver on the cluster reaches
    # the storage and MLflow by the names the client container uses
    dashboard = flag(head, "--dashboard-port")
    assert client["AUTOOPT_JOBS_ADDRESS"] == f"http://ray-head:{dashboard}"
    assert env["AUTOOPT_JOBS_ADDRESS"] == f"http://127.0.0.1:{env['RAY_DASHBOARD_PORT']}"
    assert env["AUTOOPT_JOB_STORAGE"] == client["AUTOOPT_STORAGE"]
    assert env["AUTOOPT_JOB_TRACKING_URI"] == client["AUTOOPT_TRACKING_URI"]


def test_ray_token_authentication_is_on(compose, env):
    for name in ("ray-head", "ray-worker", "autoopt"):
        e = environment(compose["services"][name])
        assert e["RAY_AUTH_MODE"] == "token", name
        assert e["RAY_AUTH_TOKEN"] == env["RAY_AUTH_TOKEN"], name
    assert env["RAY_AUTH_MODE"] == "token"  # and for clients on the host
    head = compose["services"]["ray-head"]["command"]
    assert flag(head, "--num-cpus") == "0", "trials must run on workers, not on the head"


def test_the_head_has_the_settings_the_cluster_tests_run_with(compose):
    """tests/local_cluster.py starts its head with HEAD_ENV (gRPC's fork handlers off, ray#63202):
    what the cluster tests pass with is what compose runs."""
    head = environment(compose["services"]["ray-head"])
    assert {k: head.get(k) for k in HEAD_ENV} == HEAD_ENV


def test_mlflow_and_dashboard_use_the_postgres_databases(compose):
    services = compose["services"]
    pg = environment(services["postgres"])
    backend = make_url(environment(services["mlflow"])["MLFLOW_BACKEND_STORE_URI"])
    assert backend.get_backend_name() == "postgresql" and backend.host == "postgres"
    assert backend.database == pg["MLFLOW_DB"] != pg["POSTGRES_DB"]
    init = next(v for v in services["postgres"]["volumes"] if "docker-entrypoint-initdb.d" in v)
    script = (ROOT / init.split(":")[0]).read_text()
    assert "CREATE DATABASE" in script and "MLFLOW_DB" in script
    assert "--serve-artifacts" in services["mlflow"]["command"]
    # the value tests/test_cluster.py runs its mlflow server with
    assert flag(services["mlflow"]["command"], "--allowed-hosts") == MLFLOW_ALLOWED_HOSTS
    dash = make_url(environment(services["optuna-dashboard"])["OPTUNA_STORAGE"])
    assert "OPTUNA_STORAGE" in services["optuna-dashboard"]["command"][-1]
    storage = make_url(environment(services["autoopt"])["AUTOOPT_STORAGE"])
    assert (dash.host, dash.port, dash.database, dash.username) == (
        storage.host, storage.port, storage.database, storage.username)


def test_volumes_are_declared_and_mounted_where_data_lives(raw, compose):
    declared = set(raw.get("volumes") or {})
    used = set()
    for name, svc in compose["services"].items():
        for v in svc.get("volumes", []):
            source, target = v.split(":")[:2]
            if source.startswith("."):
                assert (ROOT / source).exists(), f"{name}: bind mount {source} missing"
            else:
                assert source in declared, f"{name}: volume {source} not declared"
                used.add(source)
    assert used == declared
    services = compose["services"]
    assert "pgdata:/var/lib/postgresql/data" in services["postgres"]["volumes"]
    dest = flag(services["mlflow"]["command"], "--artifacts-destination")
    assert f"mlartifacts:{dest}" in services["mlflow"]["volumes"]


def test_ray_workers_reserve_nvidia_gpus(compose, env):
    worker = compose["services"]["ray-worker"]
    devices = worker["deploy"]["resources"]["reservations"]["devices"]
    assert any(d["driver"] == "nvidia" and "gpu" in d["capabilities"] for d in devices)
    assert flag(worker["command"], "--num-gpus") == env["RAY_WORKER_GPUS"] == str(devices[0]["count"])


def test_dockerfile_matches_this_environment():
    """A ray:// client must have the image's Python minor version and Ray version."""
    import ray

    text = (ROOT / "Dockerfile").read_text()
    assert re.search(r"ARG PYTHON_VERSION=(\S+)", text).group(1) == f"{sys.version_info.major}.{sys.version_info.minor}"
    assert re.search(r"ARG RAY_VERSION=(\S+)", text).group(1) == ray.__version__
    for src in re.findall(r"^COPY (.+) \S+$", text, flags=re.M):
        for part in src.split():
            assert (ROOT / part).exists(), f"Dockerfile copies missing {part}"
    # every command the compose services run from this image is installed by it
    commands = {svc["command"][0] for name, svc in yaml.safe_load(COMPOSE.read_text())["services"].items()
                if name != "postgres"}
    assert commands == {"ray", "mlflow", "python", "autoopt"}
    assert "optuna_dashboard" in yaml.safe_load(COMPOSE.read_text())["services"]["optuna-dashboard"]["command"][-1]
    assert "optuna-dashboard" in text and "ray[default,client]" in text and re.search(r"pip install .* \.", text)
    assert '"mlflow[auth]"' in text, "the image must carry MLflow's basic-auth app (Flask-WTF)"


def test_docker_compose_config_accepts_the_file(tmp_path):
    """``docker compose config`` where the compose plugin exists (it needs no daemon)."""
    docker = shutil.which("docker")
    if docker is None or subprocess.run([docker, "compose", "version"], capture_output=True).returncode != 0:
        pytest.skip("docker compose plugin not installed here; the file is checked by the tests above")
    env_file = tmp_path / ".env"
    env_file.write_text(ENV_EXAMPLE.read_text())
    done = subprocess.run([docker, "compose", "-f", str(COMPOSE), "--env-file", str(env_file), "config", "-q"],
                          capture_output=True, text=True)
    assert done.returncode == 0, done.stderr


def command_lines(service: dict[str, Any]) -> list[str]:
    """Everything of a service that ends up on a process's command line."""
    parts: list[Any] = [service.get("entrypoint") or [], service.get("command") or [],
                        (service.get("healthcheck") or {}).get("test") or []]
    return [str(x) for part in parts for x in (part if isinstance(part, list) else [part])]


def test_no_secret_is_on_a_command_line(raw):
    compose = resolve(raw, SECRETS)
    for name, svc in compose["services"].items():
        argv = " ".join(command_lines(svc))
        for key, secret in SECRETS.items():
            assert secret not in argv, f"{name}: {key} on its command line ({argv[:200]})"
    # ... but in the environment of the services that need them
    env = lambda n: environment(compose["services"][n])  # noqa: E731
    assert "pg-s3cret" in env("mlflow")["MLFLOW_BACKEND_STORE_URI"]
    assert "pg-s3cret" in env("optuna-dashboard")["OPTUNA_STORAGE"]


def test_mlflow_server_requires_a_login(compose):
    import configparser

    mlflow = compose["services"]["mlflow"]
    assert flag(mlflow["command"], "--app-name") == "basic-auth"
    e = environment(mlflow)
    assert e["MLFLOW_AUTH_ADMIN_PASSWORD"] and e["MLFLOW_FLASK_SERVER_SECRET_KEY"]
    config_path = e["MLFLOW_AUTH_CONFIG_PATH"]
    mount = next(v for v in mlflow["volumes"] if v.split(":")[1] == config_path)
    config = configparser.ConfigParser()
    assert config.read(ROOT / mount.split(":")[0]), f"{mount}: no auth config"
    db = make_url(config["mlflow"]["database_uri"]).database
    volume = next(v for v in mlflow["volumes"] if not v.startswith(".") and db.startswith(v.split(":")[1] + "/"))
    assert volume.split(":")[0] == "mlflow-auth", "the users' database must persist on a volume"
    assert config["mlflow"]["default_permission"] in ("READ", "NO_PERMISSIONS")
    # the health check needs no login (MLflow leaves /health open); everything else does
    assert "/health" in " ".join(mlflow["healthcheck"]["test"])


def test_every_service_refuses_placeholder_secrets(raw, compose, env):
    """Each service runs docker/require-secrets.sh first; run the script, as its entrypoint would,
    with the service's environment from .env.example (placeholders) and from a real .env."""
    real = resolve(raw, {**env, **SECRETS, "MLFLOW_TRACKING_PASSWORD": SECRETS["MLFLOW_ADMIN_PASSWORD"]})
    for name, svc in compose["services"].items():
        entrypoint = svc.get("entrypoint") or []
        assert entrypoint[:2] == ["sh", "/usr/local/bin/require-secrets"], name
        assert any(v.startswith("./docker/require-secrets.sh:/usr/local/bin/require-secrets") for v in svc["volumes"]), name
        base = {"PATH": os.environ["PATH"]}
        placeholder = subprocess.run(["sh", str(REQUIRE_SECRETS), "true"], env={**base, **environment(svc)},
                                     capture_output=True, text=True)
        secrets_here = [k for k, v in environment(svc).items() if "change-me" in v]
        if secrets_here:  # every service but the Ray head holds a password or the Ray token
            assert placeholder.returncode == 1, name
            assert "refusing to start" in placeholder.stderr and secrets_here[0] in placeholder.stderr, name
        ok = subprocess.run(["sh", str(REQUIRE_SECRETS), "sh", "-c", "echo started"],
                            env={**base, **environment(real["services"][name])}, capture_output=True, text=True)
        assert ok.returncode == 0 and ok.stdout.strip() == "started", (name, ok.stderr)
    refused = subprocess.run(["sh", str(REQUIRE_SECRETS), "true"], env={"PATH": os.environ["PATH"], "RAY_AUTH_TOKEN": ""},
                             capture_output=True, text=True)
    assert refused.returncode == 1 and "RAY_AUTH_TOKEN" in refused.stderr


@pytest.mark.slow
def test_mlflow_basic_auth_refuses_anonymous_clients(raw, tmp_path, monkeypatch):
    """Run `mlflow server` as the compose service does (its command, its auth config, its environment;
    a SQLite store and local folders in place of PostgreSQL and the volumes): anonymous and
    wrong-password requests get 401, the compose clients' login gets in, /health stays open."""
    import base64
    import configparser
    import time
    import urllib.error
    import urllib.request

    from local_cluster import free_port

    from autoopt.ui import stop_ui

    svc = resolve(raw, SECRETS)["services"]["mlflow"]
    env = environment(svc)
    config = configparser.ConfigParser()
    config.read(ROOT / next(v for v in svc["volumes"] if v.endswith(env["MLFLOW_AUTH_CONFIG_PATH"] + ":ro")).split(":")[0])
    config["mlflow"]["database_uri"] = f"sqlite:///{tmp_path / 'basic_auth.db'}"
    with open(tmp_path / "auth.ini", "w") as f:
        config.write(f)
    port = free_port()
    command = list(svc["command"][2:])  # after `mlflow server`
    for name, value in (("--artifacts-destination", str(tmp_path / "artifacts")), ("--host", "127.0.0.1"),
                        ("--port", str(port))):
        command[command.index(name) + 1] = value
    command += ["--workers", "1"]  # one web worker is enough for a probe (the default starts several)
    server_env = {**os.environ, **env, "MLFLOW_AUTH_CONFIG_PATH": str(tmp_path / "auth.ini"),
                  "MLFLOW_BACKEND_STORE_URI": f"sqlite:///{tmp_path / 'mlflow.db'}"}
    log = open(tmp_path / "mlflow.log", "wb")  # noqa: SIM115 - closed below
    proc = subprocess.Popen([sys.executable, "-m", "mlflow", "server", *command], env=server_env, stdout=log,
                            stderr=subprocess.STDOUT, start_new_session=True)
    base = f"http://127.0.0.1:{port}"

    def get(path: str, login: tuple[str, str] | None = None) -> int:
        request = urllib.request.Request(base + path)
        if login:
            request.add_header("Authorization", "Basic " + base64.b64encode(":".join(login).encode()).decode())
        try:
            with urllib.request.urlopen(request, timeout=10) as response:
                return response.status
        except urllib.error.HTTPError as exc:
            return exc.code

    try:
        deadline = time.monotonic() + 180
        while True:
            assert proc.poll() is None, (tmp_path / "mlflow.log").read_text()[-3000:]
            try:
                if get("/health") == 200:
                    break
            except OSError:
                pass
            assert time.monotonic() < deadline, "mlflow server did not start"
            time.sleep(0.5)
        search = "/api/2.0/mlflow/experiments/search?max_results=1"
        client = environment(resolve(raw, SECRETS)["services"]["autoopt"])
        login = (client["MLFLOW_TRACKING_USERNAME"], client["MLFLOW_TRACKING_PASSWORD"])
        assert get(search) == 401
        assert get(search, (login[0], "wrong")) == 401
        assert get(search, login) == 200
        # what autoopt's tracking does with the clients' environment: MLflow's client logs in
        from mlflow import MlflowClient

        monkeypatch.setenv("MLFLOW_TRACKING_USERNAME", login[0])
        monkeypatch.setenv("MLFLOW_TRACKING_PASSWORD", login[1])
        assert MlflowClient(tracking_uri=base).create_experiment("basic-auth-probe")
    finally:
        stop_ui(proc)
        log.close()
