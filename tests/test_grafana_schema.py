"""Every generated dashboard checked against Grafana's published dashboard schema: the npm
package `@grafana/schema` (TypeScript types generated from Grafana's CUE schema) and the
TypeScript compiler, both installed from the npm registry into a cache on first use. Each
dashboard JSON is type-checked as a `Dashboard` (the classic JSON model Grafana provisions and
serves at /api/dashboards), so a field Grafana does not know, a missing required field or a
value of the wrong type fails the build."""

from __future__ import annotations

import fcntl
import json
import os
import shutil
import subprocess
from pathlib import Path

import pytest

from featuredrift.dashboards.spec import DASHBOARDS, dashboard_path

GRAFANA_SCHEMA = "13.2.3"
TYPESCRIPT = "5.9.3"
AS_JSON = Path(__file__).parent / "data" / "as-json.ts"
TSCONFIG = {"compilerOptions": {"strict": True, "noEmit": True, "module": "esnext", "moduleResolution": "bundler",
                                "target": "es2022", "skipLibCheck": True, "types": []}, "include": ["*.ts"]}


@pytest.fixture(scope="session")
def schema_packages() -> Path:
    """node_modules with @grafana/schema and typescript, installed once per version pair."""
    npm = shutil.which("npm")
    if npm is None or shutil.which("node") is None:
        pytest.skip("node and npm are not installed (Debian package npm; scripts/setup.sh --services installs it)")
    home = Path(os.environ.get("FEATUREDRIFT_HOME") or Path.home() / ".cache" / "featuredrift")
    root = home / "npm" / f"grafana-schema-{GRAFANA_SCHEMA}-typescript-{TYPESCRIPT}"
    root.mkdir(parents=True, exist_ok=True)
    done = root / ".installed"
    with open(root / ".lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)  # parallel sessions share one install
        if not done.exists():
            (root / "package.json").write_text(json.dumps({"name": "featuredrift-dashboard-check", "private": True}))
            install = subprocess.run(
                [npm, "install", "--no-audit", "--no-fund", "--ignore-scripts", "--save-exact",
                 f"@grafana/schema@{GRAFANA_SCHEMA}", f"typescript@{TYPESCRIPT}"],
                cwd=root, capture_output=True, text=True, timeout=600)
            assert install.returncode == 0, f"npm install failed:\n{install.stdout[-2000:]}\n{install.stderr[-2000:]}"
            done.touch()
    return root / "node_modules"


def type_check(packages: Path, folder: Path, dashboards: dict[str, dict]) -> subprocess.CompletedProcess:
    """tsc over one `<name>.ts` per dashboard: `const dashboard: AsJson<Dashboard> = <the JSON>`."""
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "node_modules").symlink_to(packages, target_is_directory=True)
    shutil.copy(AS_JSON, folder / "as-json.ts")
    (folder / "tsconfig.json").write_text(json.dumps(TSCONFIG))
    for name, dashboard in dashboards.items():
        (folder / f"{name}.ts").write_text(
            'import type { Dashboard } from "@grafana/schema";\nimport type { AsJson } from "./as-json";\n'
            f"export const dashboard: AsJson<Dashboard> = {json.dumps(dashboard, indent=1)};\n")
    return subprocess.run(["node", str(packages / "typescript" / "bin" / "tsc"), "-p", str(folder / "tsconfig.json")],
                          capture_output=True, text=True, timeout=300)


def test_every_generated_dashboard_is_a_grafana_dashboard(schema_packages, tmp_path):
    dashboards = {d.uid.replace("-", "_"): json.loads(dashboard_path(d).read_text()) for d in DASHBOARDS}
    checked = type_check(schema_packages, tmp_path / "generated", dashboards)
    assert checked.returncode == 0, f"Grafana's schema rejects a generated dashboard:\n{checked.stdout}{checked.stderr}"


def test_the_check_rejects_what_grafana_would_drop_or_refuse(schema_packages, tmp_path):
    """The check has teeth: an unknown panel field, a link without its required fields and a
    threshold mode Grafana does not have each fail it, naming the place."""
    base = json.loads(dashboard_path(DASHBOARDS[0]).read_text())
    unknown_field = json.loads(json.dumps(base))
    unknown_field["panels"][0]["gridPosition"] = unknown_field["panels"][0]["gridPos"]
    bare_link = json.loads(json.dumps(base))
    bare_link["links"] = [{"title": "featuredrift", "type": "dashboards", "tags": ["featuredrift"]}]
    bad_mode = json.loads(json.dumps(base))
    bad_mode["panels"][0]["fieldConfig"]["defaults"]["thresholds"]["mode"] = "absolut"
    checked = type_check(schema_packages, tmp_path / "broken", {"unknown_field": unknown_field, "bare_link": bare_link,
                                                                  "bad_mode": bad_mode})
    assert checked.returncode != 0
    assert "unknown_field.ts" in checked.stdout and "'\"gridPosition\"' does not exist" in checked.stdout
    assert "bare_link.ts" in checked.stdout and "icon, includeVars, keepTime" in checked.stdout
    assert "bad_mode.ts" in checked.stdout and '"absolut"' in checked.stdout
