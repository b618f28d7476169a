"""`featuredrift bench --store` at toy size, on SQLite and a real PostgreSQL: the store it builds
reads back as a real one, every Grafana panel and `runs` command it times ran and returned rows,
and it names the slowest query. (The 1,000-run numbers in the README come from the command.)"""

from __future__ import annotations

import hashlib

import pytest
from servers import create_postgres_database
from typer.testing import CliRunner

from featuredrift.cli.main import app
from featuredrift.store.run_store import RunStore

pytestmark = pytest.mark.slow


@pytest.fixture(params=["sqlite", pytest.param("postgresql", marks=pytest.mark.servers)])
def empty_store(request, tmp_path) -> str:
    if request.param == "sqlite":
        return f"sqlite:///{tmp_path / 'load.db'}"
    name = "load_" + hashlib.sha1(request.node.nodeid.encode()).hexdigest()[:12]
    return create_postgres_database(request.getfixturevalue("postgres_url"), name)


def test_store_load_builds_a_real_store_and_times_every_query(zoo_nano, empty_store, tmp_path):
    import json

    out = tmp_path / "load.json"
    result = CliRunner().invoke(app, ["bench", "--store", "--store-url", empty_store, "--runs", "3",
                                      "--evaluations", "4", "--repeats", "1", "--json", str(out)])
    assert result.exit_code == 0, result.output
    results = json.loads(out.read_text())
    backend = "postgresql" if empty_store.startswith("postgresql") else "sqlite"
    assert f"slowest on {backend}:" in result.output
    with RunStore(empty_store) as store:
        runs = store.list_runs()
        assert [r.name for r in runs] == ["load-0000", "load-0001", "load-0002"]
        assert store.recorded_steps("load-0001") == [0, 50, 100, 150]
        assert len(store.drifted_features("load-0001")) == results["stores"][backend]["rows"]["drifted_features"] // 3
        assert store.feature_contexts("load-0001", step=150)
    timings = {t["query"]: t for t in results["timings"]}
    commands = [q for q in timings if q.startswith("runs ")]
    assert len(commands) == 4 and all(timings[q]["rows"][backend] > 3 for q in commands)
    panels = [q for q in timings if q.startswith("Grafana: ")]
    if backend == "postgresql":
        # every SQL panel and variable of the step dashboard, with 1, 30 (here: all 3) and all runs
        assert len(panels) >= 3 * 16
        empty = [q for q in panels if timings[q]["rows"][backend] == 0 and "Alerts" not in q]
        assert not empty, f"panels without rows on a store that has the data: {empty}"
    else:
        assert not panels  # Grafana reads the run store on PostgreSQL
