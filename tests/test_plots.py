"""`featuredrift report`: a few stored evaluations become PNGs and an HTML page embedding them."""

from __future__ import annotations

import base64
import re

import pytest
from test_store import make_report
from typer.testing import CliRunner

from featuredrift.monitor.cli import app
from featuredrift.monitor.plots import write_run_report
from featuredrift.monitor.store import RunStore

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


def stored_run(tmp_path) -> str:
    url = f"sqlite:///{tmp_path / 'runs.db'}"
    with RunStore(url) as store:
        store.start_run("plotted", {"refusal_k": 4}, reference_policy="initial")
        for step in (0, 10, 20, 30):
            store.record_evaluation("plotted", make_report(step))
        store.record_alert("plotted", "RefusalFeaturesFading", "critical", message="gap <0.5>", step=30)
    return url


@pytest.mark.slow
def test_report_writes_pngs_and_self_contained_html(tmp_path):
    url = stored_run(tmp_path)
    with RunStore(url) as store:
        files = write_run_report(store, "plotted", tmp_path / "report")
        metric_names = {name for name, _ in store.metric_names("plotted")}
    names = {path.name for path in files.images}
    assert {"refusal_layers.1.png", "refusal_layers.3.png", "drifted_layers.1.png", "drifted_layers.3.png"} <= names
    assert {f"metric_{n.removeprefix('featuredrift_')}.png" for n in metric_names} <= names
    for path in files.images:
        assert path.read_bytes().startswith(PNG_MAGIC) and path.stat().st_size > 2000
    page = files.html.read_text()
    embedded = re.findall(r"src='data:image/png;base64,([A-Za-z0-9+/=]+)'", page)
    assert len(embedded) == len(files.images)
    assert sorted(base64.b64decode(e) for e in embedded) == sorted(p.read_bytes() for p in files.images)
    assert "RefusalFeaturesFading" in page and "gap &lt;0.5&gt;" in page
    assert "src='http" not in page and "src=\"" not in page  # nothing fetched from elsewhere


@pytest.mark.slow
def test_report_and_runs_commands(tmp_path):
    url = stored_run(tmp_path)
    runner = CliRunner(env={"COLUMNS": "250"})
    result = runner.invoke(app, ["report", "plotted", "--db", url, "--out", str(tmp_path / "cli-report")])
    assert result.exit_code == 0, result.output
    assert (tmp_path / "cli-report" / "index.html").is_file()

    listed = runner.invoke(app, ["runs", "list", "--db", url])
    assert listed.exit_code == 0 and "plotted" in listed.output
    shown = runner.invoke(app, ["runs", "show", "plotted", "--db", url])
    assert shown.exit_code == 0 and "RefusalFeaturesFading" in shown.output
    out = tmp_path / "export.csv"
    exported = runner.invoke(app, ["runs", "export", "plotted", "--db", url, "--format", "csv", "--out", str(out)])
    assert exported.exit_code == 0 and out.read_text().startswith("run,step,timestamp")
    missing = runner.invoke(app, ["runs", "show", "nope", "--db", url])
    assert missing.exit_code == 2 and "known runs: plotted" in missing.output
    compared = runner.invoke(app, ["runs", "compare", "plotted", "plotted", "--db", url])
    assert compared.exit_code == 0
    unknown = runner.invoke(app, ["report", "nope", "--db", url, "--out", str(tmp_path / "x")])
    assert unknown.exit_code == 2 and "known runs: plotted" in unknown.output
