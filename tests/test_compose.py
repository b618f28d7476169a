"""docker-compose.yml and the files it mounts: valid against the Compose specification schema,
pinned images, health checks, named volumes, and mounts that point at the files the configs
refer to. Docker cannot run here, so this is the static part of "the stack comes up".

tests/data/compose-spec.json is the official Compose specification JSON schema
(compose-spec/compose-spec, Apache-2.0) as shipped in the docker-compose 1.29.2 distribution
(compose/config/compose_spec.json).
"""

from __future__ import annotations

import copy
import json
import os
import posixpath
import re
import shutil
import subprocess
from pathlib import Path

import jsonschema
import pytest
import yaml

from featuredrift.dashboards.spec import (
    DASHBOARD_DIR,
    DASHBOARDS,
    POSTGRES_TYPE,
    PROMETHEUS_UID,
    STORE_UID,
)

ROOT = Path(__file__).resolve().parents[1]
COMPOSE = ROOT / "docker-compose.yml"
SCHEMA = json.loads((Path(__file__).parent / "data" / "compose-spec.json").read_text())
_VARIABLE = re.compile(r"\$\{(\w+)(?::?-([^}]*))?\}")


def interpolate(text: str, environment: dict[str, str] | None = None) -> str:
    """Compose's `${VAR}` / `${VAR:-default}` substitution, as `docker compose config` does first."""
    environment = environment or {}
    return _VARIABLE.sub(lambda m: environment.get(m.group(1), m.group(2) or ""), text)


@pytest.fixture(scope="module")
def compose() -> dict:
    return yaml.safe_load(interpolate(COMPOSE.read_text()))


def validator():
    cls = jsonschema.validators.validator_for(SCHEMA)
    cls.check_schema(SCHEMA)
    return cls(SCHEMA)


def test_compose_file_follows_the_compose_specification(compose):
    errors = sorted(validator().iter_errors(compose), key=lambda e: list(e.path))
    assert not errors, "\n".join(f"{list(e.path)}: {e.message}" for e in errors)


def test_schema_rejects_a_broken_compose_file(compose):
    broken = copy.deepcopy(compose)
    broken["services"]["prometheus"]["helthcheck"] = broken["services"]["prometheus"].pop("healthcheck")
    broken["services"]["grafana"]["depends_on"]["prometheus"]["condition"] = "service_ready"
    messages = [e.message for e in validator().iter_errors(broken)]
    assert any("helthcheck" in m for m in messages)
    assert any("service_ready" in m for m in messages)


def test_stack_has_the_five_services_pinned_and_healthchecked(compose):
    services = compose["services"]
    assert set(services) == {"prometheus", "pushgateway", "alertmanager", "grafana", "postgres"}
    for name, service in services.items():
        image = service["image"]
        repository, _, tag = image.rpartition(":")
        assert repository and tag and tag != "latest" and re.search(r"\d+\.\d+", tag), f"{name}: unpinned {image}"
        assert service["healthcheck"]["test"], f"{name}: no health check"
    assert services["grafana"]["depends_on"]["prometheus"]["condition"] == "service_healthy"
    assert services["prometheus"]["depends_on"]["pushgateway"]["condition"] == "service_healthy"


def test_named_volumes_are_declared_and_bind_mounts_exist(compose):
    declared = set(compose["volumes"])
    used = set()
    for name, service in compose["services"].items():
        for volume in service.get("volumes", []):
            source = volume.split(":")[0]
            if source.startswith("."):
                assert (ROOT / source).exists(), f"{name}: bind mount source {source} missing"
            else:
                assert source in declared, f"{name}: volume {source} not declared"
                used.add(source)
    assert used == declared
    assert {s for s in compose["services"] if any(not v.startswith(".") for v in compose["services"][s]["volumes"])} == set(
        compose["services"]
    ), "every service keeps its data in a named volume"


def test_ports_bind_to_loopback_unless_configured():
    services = yaml.safe_load(interpolate(COMPOSE.read_text()))["services"]
    assert all(p.startswith("127.0.0.1:") for s in services.values() for p in s["ports"])
    exposed = yaml.safe_load(interpolate(COMPOSE.read_text(), {"FEATUREDRIFT_BIND_ADDRESS": "0.0.0.0"}))
    assert exposed["services"]["pushgateway"]["ports"] == ["0.0.0.0:9091:9091"]


def _mounts(service: dict) -> dict[str, Path]:
    """container path → repository path for a service's bind mounts."""
    out = {}
    for volume in service.get("volumes", []):
        source, target = volume.split(":")[:2]
        if source.startswith("."):
            out[target] = (ROOT / source).resolve()
    return out


def _in_container(mounts: dict[str, Path], container_path: str) -> Path | None:
    for target, source in mounts.items():
        if container_path == target:
            return source
        if container_path.startswith(target.rstrip("/") + "/"):
            return source / container_path[len(target.rstrip("/")) + 1 :]
    return None


def _flag(command: list[str], name: str) -> str:
    return next(c.split("=", 1)[1] for c in command if c.startswith(f"--{name}="))


def test_prometheus_mounts_its_config_and_the_generated_rules(compose):
    service = compose["services"]["prometheus"]
    mounts = _mounts(service)
    config_path = _flag(service["command"], "config.file")
    assert _in_container(mounts, config_path) == ROOT / "deploy" / "prometheus" / "prometheus.yml"
    config = yaml.safe_load((ROOT / "deploy" / "prometheus" / "prometheus.yml").read_text())
    for rule_file in config["rule_files"]:
        in_container = posixpath.normpath(posixpath.join(posixpath.dirname(config_path), rule_file))
        assert _in_container(mounts, in_container) == ROOT / "featuredrift" / "alerts" / "rules.yml"
    pushgateway_job = next(j for j in config["scrape_configs"] if j["job_name"] == "pushgateway")
    assert pushgateway_job["honor_labels"] is True
    assert pushgateway_job["static_configs"][0]["targets"] == ["pushgateway:9091"]
    assert config["alerting"]["alertmanagers"][0]["static_configs"][0]["targets"] == ["alertmanager:9093"]


def test_alertmanager_mounts_the_alerts_config(compose):
    service = compose["services"]["alertmanager"]
    path = _flag(service["command"], "config.file")
    assert _in_container(_mounts(service), path) == ROOT / "featuredrift" / "alerts" / "alertmanager.yml"


def test_grafana_provisioning_matches_the_dashboards_and_datasource(compose):
    service = compose["services"]["grafana"]
    mounts = _mounts(service)
    provisioning = _in_container(mounts, "/etc/grafana/provisioning")
    assert provisioning == ROOT / "deploy" / "grafana" / "provisioning"
    datasources = yaml.safe_load((provisioning / "datasources" / "featuredrift.yml").read_text())["datasources"]
    prometheus, store = datasources
    assert (prometheus["uid"], prometheus["type"], prometheus["url"]) == (PROMETHEUS_UID, "prometheus", "http://prometheus:9090")
    # the run store: the compose PostgreSQL service, its database and user, the password Grafana is given
    postgres = compose["services"]["postgres"]
    assert (store["uid"], store["type"]) == (STORE_UID, POSTGRES_TYPE)
    assert store["url"] == "postgres:5432" and postgres["ports"][0].endswith(":5432")
    # Grafana logs in as the read-only role the PostgreSQL init script creates, not as the writer
    assert store["user"] == postgres["environment"]["FEATUREDRIFT_GRAFANA_DB_USER"] != postgres["environment"]["POSTGRES_USER"]
    assert store["jsonData"]["database"] == postgres["environment"]["POSTGRES_DB"]
    variable = store["secureJsonData"]["password"].removeprefix("$")
    assert variable == "FEATUREDRIFT_GRAFANA_DB_PASSWORD" and "FEATUREDRIFT_POSTGRES_PASSWORD" not in service["environment"]
    assert service["environment"][variable] == postgres["environment"]["FEATUREDRIFT_GRAFANA_DB_PASSWORD"]
    initdb = _in_container(_mounts(postgres), "/docker-entrypoint-initdb.d")
    assert (initdb / "10-grafana-reader.sh").stat().st_mode & 0o111, "executable: the postgres image runs it as its own process instead of sourcing it"
    assert service["depends_on"]["postgres"]["condition"] == "service_healthy"
    providers = yaml.safe_load((provisioning / "dashboards" / "featuredrift.yml").read_text())["providers"]
    dashboards_dir = _in_container(mounts, providers[0]["options"]["path"])
    assert dashboards_dir == DASHBOARD_DIR.resolve()
    assert sorted(p.name for p in dashboards_dir.glob("*.json")) == sorted(f"{d.uid}.json" for d in DASHBOARDS)
    assert "featuredrift-steps.json" in {p.name for p in dashboards_dir.glob("*.json")}
    home = service["environment"]["GF_DASHBOARDS_DEFAULT_HOME_DASHBOARD_PATH"]
    assert _in_container(mounts, home).exists()


def test_postgres_matches_the_documented_store_url(compose):
    environment = compose["services"]["postgres"]["environment"]
    readme = (ROOT / "deploy" / "README.md").read_text()
    url = (
        f"postgresql+psycopg://{environment['POSTGRES_USER']}:{environment['POSTGRES_PASSWORD']}"
        f"@localhost:5432/{environment['POSTGRES_DB']}"
    )
    assert url in readme


@pytest.mark.skipif(shutil.which("promtool") is None, reason="promtool not installed")
def test_promtool_checks_the_prometheus_config():
    """Relative rule paths resolve to featuredrift/alerts/rules.yml here as in the container, so this also
    checks the rules the container will load."""
    result = subprocess.run(
        ["promtool", "check", "config", str(ROOT / "deploy" / "prometheus" / "prometheus.yml")],
        capture_output=True,
        text=True,
        timeout=60,
        cwd=os.fspath(ROOT),
    )
    output = result.stdout + result.stderr
    assert result.returncode == 0, output
    assert "1 rule files found" in output and "featuredrift/alerts/rules.yml" in output
