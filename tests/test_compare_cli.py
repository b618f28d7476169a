"""`featuredrift runs compare A B`: the runs aligned by step and layer, the series where they
diverge listed first with the step they part at and both values there."""

from __future__ import annotations

import pytest
from test_store import make_report
from typer.testing import CliRunner

from featuredrift.cli.main import app
from featuredrift.store import RunStore
from featuredrift.store.rows import labels_key


@pytest.fixture
def two_runs(tmp_path) -> str:
    """`slow` fades its reference refusal features by 1% a step, `fast` by 5% and runs 5 steps longer."""
    url = f"sqlite:///{tmp_path / 'runs.db'}"
    with RunStore(url) as store:
        store.start_run("slow", {"learning_rate": 1e-5})
        store.start_run("fast", {"learning_rate": 1e-4})
        for step in (0, 5, 10, 15):
            store.record_evaluation("slow", make_report(step, fade=0.01))
        for step in (0, 5, 10, 15, 20):
            store.record_evaluation("fast", make_report(step, fade=0.05))
    return url


def test_aligned_series_pairs_values_at_common_steps(two_runs):
    with RunStore(two_runs) as store:
        aligned = store.aligned_series("slow", "fast")
    gap = aligned[("featuredrift_refusal_feature_gap", labels_key({"features": "reference", "layer": "layers.3"}))]
    assert [p.step for p in gap] == [0, 5, 10, 15]  # step 20: only `fast` has it
    assert (gap[1].value_a, gap[1].value_b) == (pytest.approx(0.95), pytest.approx(0.75))


def test_compare_lists_where_the_runs_diverge_by_layer_and_step(two_runs):
    result = CliRunner(env={"COLUMNS": "250"}).invoke(app, ["runs", "compare", "slow", "fast", "--db", two_runs])
    assert result.exit_code == 0, result.output
    lines = result.output.splitlines()
    assert lines[0] == "steps both evaluated: 0, 5, 10, 15; only fast: 20"
    rows = [[cell.strip() for cell in line.split("│")[1:-1]] for line in lines if line.startswith("│")]
    diverging = [r for r in rows if r[0].startswith("layers.")]
    assert [(r[0], r[1], r[2]) for r in diverging] == [
        ("layers.1", "refusal_feature_gap", "features=reference"), ("layers.1", "refusal_feature_gap_relative", ""),
        ("layers.3", "refusal_feature_gap", "features=reference"), ("layers.3", "refusal_feature_gap_relative", ""),
    ]
    first = diverging[0]
    assert first[3:] == ["5", "0.95", "0.75", "15", "0.85", "0.25", "-0.6"]
    assert "more series agree within 5% at every common step" in result.output
    assert "learning_rate" in result.output

    everything = CliRunner(env={"COLUMNS": "250"}).invoke(app, ["runs", "compare", "slow", "fast", "--all", "--db", two_runs])
    assert "fvu_ratio" in everything.output and "agree within" not in everything.output


def test_compare_of_a_run_with_itself_agrees(two_runs):
    result = CliRunner(env={"COLUMNS": "250"}).invoke(app, ["runs", "compare", "slow", "slow", "--db", two_runs])
    assert result.exit_code == 0 and "slow and slow agree within 5% at every common step" in result.output
