"""One job is one run; a resume continues the right one; nothing secret is stored, exported,
logged or shown; read-only commands create nothing; bad configuration fails early."""

from __future__ import annotations

import logging
import re
from pathlib import Path

import pytest
from test_faults import EXPECTED_STEPS, _train
from typer.testing import CliRunner

from featuredrift.callbacks.feature_drift import check_same_inputs
from featuredrift.cli.main import app
from featuredrift.monitor.config import MonitorConfig
from featuredrift.monitor.drift_monitor import DriftMonitor, MonitorError
from featuredrift.store.run_store import RunStore


@pytest.mark.slow
def test_two_jobs_with_one_name_are_two_runs(zoo_nano, tmp_path):
    first = _train(zoo_nano, tmp_path, run_name="shared")
    second = _train(zoo_nano, tmp_path, run_name="shared")  # same name, same output folder, same store
    assert first.run_id != second.run_id and first.run_id.startswith("shared-")
    db = first.config.store_url
    with RunStore(db) as store:
        assert store.recorded_steps(first.run_id) == store.recorded_steps(second.run_id) == EXPECTED_STEPS
        runs = store.list_runs()
        assert {r.name for r in runs} == {first.run_id, second.run_id}
        assert all(r.model_fingerprint and r.sae_fingerprint for r in runs)
    # Each job measured against its own step-0 reference, cached under its own id.
    caches = sorted(p.name for p in (tmp_path / "out" / "featuredrift").glob("reference-*.safetensors"))
    assert len(caches) == 2
    listing = CliRunner().invoke(app, ["runs", "list", "--db", db], env={"COLUMNS": "250"})
    assert first.run_id in listing.output and second.run_id in listing.output
    ambiguous = CliRunner().invoke(app, ["runs", "show", "shared", "--db", db])
    assert ambiguous.exit_code == 2 and "names 2 runs" in ambiguous.output
    shown = CliRunner().invoke(app, ["runs", "show", first.run_id, "--db", db], env={"COLUMNS": "250"})
    assert shown.exit_code == 0 and "model —" not in shown.output


def test_corrupt_reference_cache_is_reported_as_corrupt(zoo_nano, zoo_nano_models, tmp_path):
    base, _, tokenizer = zoo_nano_models
    config = MonitorConfig(sae=str(zoo_nano.sae), probes=str(zoo_nano.probes), max_probes=4, refusal_score_every=0)
    cache = tmp_path / "reference.safetensors"
    DriftMonitor(config).start(base, tokenizer, reference_cache=cache)
    data = bytearray(cache.read_bytes())
    header = int.from_bytes(data[:8], "little") + 8
    for offset in range(header + 16, header + 64):  # flip bits inside a tensor, header intact
        data[offset] ^= 0xFF
    cache.write_bytes(bytes(data))
    with pytest.raises(MonitorError, match="corrupt"):
        DriftMonitor(config).start(base, tokenizer, reference_cache=cache, require_cache=True)


def test_resume_with_another_sae_or_probe_set_fails_clearly():
    saved = {"sae_fingerprint": "a" * 64, "probe_fingerprint": "b" * 64}
    check_same_inputs(saved, dict(saved), "run-1")
    with pytest.raises(MonitorError, match="resuming run run-1: expected the SAE the run started with"):
        check_same_inputs(saved, {**saved, "sae_fingerprint": "c" * 64}, "run-1")
    with pytest.raises(MonitorError, match="expected the probe set"):
        check_same_inputs(saved, {**saved, "probe_fingerprint": "c" * 64}, "run-1")


def test_tokenizer_without_chat_template_needs_an_explicit_base_format(zoo_nano, zoo_nano_models, caplog):
    import copy

    base, _, tokenizer = zoo_nano_models
    plain = copy.deepcopy(tokenizer)
    plain.chat_template = None
    settings = dict(sae=str(zoo_nano.sae), probes=str(zoo_nano.probes), max_probes=4, refusal_score_every=0)
    with pytest.raises(MonitorError, match="expected a chat template .* prompt_format='base'"):
        DriftMonitor(MonitorConfig(**settings)).start(base, plain)
    monitor = DriftMonitor(MonitorConfig(**settings, prompt_format="base"))
    with caplog.at_level(logging.WARNING):
        monitor.start(base, plain)
    assert "prompt_format='base'" in caplog.text and "chat" not in monitor.probe_batches


def test_urls_are_validated_when_configured():
    with pytest.raises(ValueError, match=r"pushgateway_url: expected an http\(s\)://host"):
        MonitorConfig(pushgateway_url="localhost:9091")
    with pytest.raises(ValueError, match="alert_webhook_url") as error:
        MonitorConfig(alert_webhook_url="hooks.slack.com/services/T0/B0/SECRETTOKEN")
    assert "SECRETTOKEN" not in str(error.value)


@pytest.mark.parametrize(("url", "why"), [
    ("featuredrift-out/runs.db", "not a URL"),
    ("postgres+nosuchdriver://user:S3CRET@db.example/runs", "no database driver 'postgres+nosuchdriver'"),
    ("mongodb://user:S3CRET@db.example/runs", "no database driver 'mongodb'"),
])
def test_a_store_url_that_can_never_work_fails_when_the_config_is_made(url, why, monkeypatch):
    with pytest.raises(ValueError, match="store_url: expected a SQLAlchemy database URL") as error:
        MonitorConfig(store_url=url)
    assert why in str(error.value) and "S3CRET" not in str(error.value)
    monkeypatch.setenv("FEATUREDRIFT_STORE_URL", url)
    with pytest.raises(ValueError, match=re.escape(why)):
        MonitorConfig()
    for usable in ("sqlite:///:memory:", "postgresql://user@host/db", "postgresql+psycopg://host/db"):
        assert MonitorConfig(store_url=usable).store_url == usable


def test_read_only_commands_create_no_database(tmp_path):
    missing = tmp_path / "nonexistent" / "dir" / "x.db"
    for command in (["runs", "list"], ["runs", "show", "r"], ["runs", "export", "r"], ["report", "r"]):
        result = CliRunner().invoke(app, [*command, "--db", f"sqlite:///{missing}"])
        assert result.exit_code == 2, (command, result.output)
        assert "expected an existing database file" in result.output
    assert not (tmp_path / "nonexistent").exists()


@pytest.mark.slow
def test_no_secret_is_stored_exported_logged_or_shown(zoo_nano, tmp_path, postgres_url, pushgateway, caplog):
    from servers import create_postgres_database

    secrets = ("PgS3cretPW", "PushS3cret", "T0KEN-SECRET")
    url = create_postgres_database(postgres_url, "secrets").replace("postgres@", f"postgres:{secrets[0]}@")
    gateway = pushgateway.url.replace("http://", f"http://user:{secrets[1]}@")
    hook = f"http://127.0.0.1:9/hooks/{secrets[2]}"
    thresholds = tmp_path / "always.yml"
    thresholds.write_text("BaseSAETransferDegraded: {threshold: -1, for: 0}\n")
    with caplog.at_level(logging.DEBUG):
        callback = _train(zoo_nano, tmp_path, store_url=url, pushgateway_url=gateway, alert_webhook_url=hook,
                          alert_thresholds=str(thresholds))
        runner = CliRunner()
        outputs = [runner.invoke(app, [*c, "--db", url], env={"COLUMNS": "250"}).output for c in (
            ["runs", "list"], ["runs", "show", callback.run_id], ["runs", "compare", callback.run_id, callback.run_id],
            ["runs", "export", callback.run_id, "--format", "json"], ["runs", "export", callback.run_id, "--format", "csv"],
        )]
        report = runner.invoke(app, ["report", callback.run_id, "--db", url, "--out", str(tmp_path / "report")])
        assert report.exit_code == 0, report.output
    with RunStore(url) as store:
        assert store.recorded_steps(callback.run_id) == EXPECTED_STEPS
        stored = store.export(callback.run_id, format="json") + repr(store.get_run(callback.run_id))
    files = [p.read_text(errors="replace") for p in Path(tmp_path).rglob("*") if p.is_file() and p.suffix in (".jsonl", ".json", ".html")]
    everything = "\n".join([stored, caplog.text, repr(callback.config), *outputs, *files])
    for secret in secrets:
        assert secret not in everything, f"{secret} leaked"
    assert re.search(r"postgresql\+psycopg://\*\*\*@127\.0\.0\.1", stored)
