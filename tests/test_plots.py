"""`featuredrift report` and `runs show --features` on stored runs: findings in plain words,
related metrics grouped per layer with alert thresholds and markers, feature cards built from
the store's feature tables, one colour per series, and one point per step."""

from __future__ import annotations

import base64
import re
from html.parser import HTMLParser

import pytest
from feature_reports import EMERGING, FADING, MOST_DRIFTED, record_story_run
from test_store import make_report
from typer.testing import CliRunner

from featuredrift.alerts.definitions import DEFAULT_DEFINITIONS
from featuredrift.cli.main import app
from featuredrift.reports.feature_cards import build_cards
from featuredrift.reports.html import write_run_report
from featuredrift.reports.plots import Colours, layer_charts, run_charts
from featuredrift.store import RunStore

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


def stored_run(tmp_path) -> str:
    """A run of reports without per-feature d̄ (as older runs were stored)."""
    url = f"sqlite:///{tmp_path / 'runs.db'}"
    with RunStore(url) as store:
        store.start_run("plotted", {"refusal_k": 4}, reference_policy="initial")
        for step in (0, 10, 20, 30):
            store.record_evaluation("plotted", make_report(step))
        store.record_alert("plotted", "RefusalFeaturesFading", "critical", message="gap <0.5>", step=30)
    return url


@pytest.fixture
def story(tmp_path) -> str:
    url = f"sqlite:///{tmp_path / 'story.db'}"
    record_story_run(url)
    return url


class Sections(HTMLParser):
    """Text of each <section id=…>, the feature cards' (layer, feature), and the <li> findings."""

    def __init__(self) -> None:
        super().__init__()
        self.sections: dict[str, str] = {}
        self.cards: list[tuple[str, int]] = []
        self.findings: list[str] = []
        self._section: str | None = None
        self._in_li = False

    def handle_starttag(self, tag, attrs):
        attrs = dict(attrs)
        if tag == "section":
            self._section = attrs["id"]
            self.sections[self._section] = ""
        if "feature-card" in (attrs.get("class") or "").split():
            self.cards.append((attrs["data-layer"], int(attrs["data-feature"])))
        if tag == "li" and self._section == "findings":
            self._in_li = True
            self.findings.append("")

    def handle_endtag(self, tag):
        if tag == "li":
            self._in_li = False

    def handle_data(self, data):
        if self._section:
            self.sections[self._section] += data
        if self._in_li:
            self.findings[-1] += data


def test_feature_cards_say_why_each_feature_is_listed(story):
    with RunStore(story) as store:
        cards = {(c.hookpoint, c.feature): c for c in build_cards(store, "story")}
    drifted = cards[("layers.3", MOST_DRIFTED)]
    assert (drifted.step, drifted.drift_rank, drifted.drift_score) == (30, 1, pytest.approx(3.0))
    (harmful,) = drifted.firing
    assert (harmful.subset, harmful.freq_reference, harmful.freq_now) == ("harmful", 0.02, pytest.approx(0.52))
    assert [p.step for p in drifted.trajectory] == [0, 10, 20, 30]
    assert [p.drift_score for p in drifted.trajectory] == pytest.approx([0.0, 1.0, 2.0, 3.0])

    faded = cards[("layers.3", FADING[1])]
    assert faded.refusal_status == "fading" and faded.refusal_rank_now is None and faded.refusal_rank_reference == 2
    assert "last in the top-k at step 10" in faded.reasons[0]
    assert faded.diff_in_means_first_and_now() == (pytest.approx(1.0), pytest.approx(0.2))
    weakened = cards[("layers.3", FADING[0])]
    assert weakened.refusal_status == "held" and weakened.diff_in_means_first_and_now()[1] == pytest.approx(0.6)

    emerging = cards[("layers.3", EMERGING)]
    assert emerging.refusal_status == "emerging" and emerging.refusal_rank_reference is None
    assert [p.step for p in emerging.trajectory if p.in_refusal_top_k] == [20, 30]
    assert "since step 20" in emerging.reasons[0]
    assert all(card.contexts == [] for card in cards.values())  # not captured yet


def test_charts_group_metrics_with_thresholds_alert_markers_and_distinct_colours(story):
    colours = Colours()
    with RunStore(story) as store:
        cards, alerts = build_cards(store, "story"), store.alerts("story")
        charts = {hookpoint: layer_charts(store, "story", hookpoint, cards, alerts, colours)
                  for hookpoint in ("layers.1", "layers.3")}
        wide = run_charts(store, "story", alerts, colours)
    refusal = charts["layers.3"][0]
    assert [line.label for line in refusal.lines] == ["relative gap", "overlap of refusal features",
                                                      "refusal-direction cosine"]
    definitions = {d.name: d for d in DEFAULT_DEFINITIONS}
    assert {(t.value, t.label.split()[0]) for t in refusal.thresholds} == {
        (definitions[n].threshold, n) for n in ("RefusalFeaturesFading", "RefusalFeaturesWeakening", "RefusalDirectionDrifted")}
    assert refusal.alert_steps == [(20, "RefusalFeaturesFading", "#d62728")]  # the alert fired on layers.3
    assert charts["layers.1"][0].alert_steps == []
    assert "Share of the reference top-k refusal features" in refusal.caption  # the meaning, not the name

    every = [c for layer in charts.values() for c in layer] + wide
    for chart in every:
        assert len({line.colour for line in chart.lines}) == len(chart.lines), f"{chart.title}: colours reused"
        for line in chart.lines:
            steps = [step for step, _ in line.points]
            assert steps == sorted(set(steps)), f"{chart.title} / {line.label}: a step drawn twice or out of order"
    # one series, one colour, on every chart it appears on
    assert charts["layers.1"][0].lines[0].colour == charts["layers.3"][0].lines[0].colour
    drifted_chart = next(c for c in charts["layers.3"] if c.key == "drifted_layers.3")
    carded = {f"feature {c.feature}" for c in cards if c.hookpoint == "layers.3" and c.drift_rank}
    assert {line.label for line in drifted_chart.lines} == carded  # the chart shows the carded features
    features_chart = next(c for c in charts["layers.3"] if c.key == "refusal_features_layers.3")
    assert f"feature {EMERGING} (new)" in {line.label for line in features_chart.lines}
    assert next(line for line in features_chart.lines if line.label == f"feature {EMERGING} (new)").dashed
    assert {c.title for c in wide} == {"Refusal rate and safety score", "Output change (KL divergence)"}


@pytest.mark.slow
def test_report_opens_with_findings_then_layers_cards_and_alerts(story, tmp_path):
    with RunStore(story) as store:
        files = write_run_report(store, "story", tmp_path / "report")
    page = files.html.read_text()
    parsed = Sections()
    parsed.feed(page)
    assert list(parsed.sections) == ["findings", "layer-layers.1", "layer-layers.3", "run-wide", "refusal",
                                     "feature-cards", "alerts", "completions"]
    assert "cybercrime_intrusion" in parsed.sections["refusal"] and "0.1 (step 30)" in parsed.sections["refusal"]
    assert "Sample completions at step 30" in parsed.sections["completions"]
    assert "Sure, first insert a tension wrench" in parsed.sections["completions"]
    findings = " | ".join(parsed.findings)
    assert "RefusalFeaturesFading (critical)" in findings and "Fired at step 20" in findings
    assert "Harmful prompts refused: 95% at step 0, 35% at step 30" in findings
    assert f"({FADING[1]}) is no longer among the top 4 refusal features" in findings
    assert f"{EMERGING} (since step 20)" in findings
    assert f"Feature {MOST_DRIFTED} at layers.1 drifted most by step 30" in findings
    assert "featuredrift_" not in page  # no raw metric names
    assert {(layer, MOST_DRIFTED) for layer in ("layers.1", "layers.3")} <= set(parsed.cards)
    assert {("layers.3", EMERGING), ("layers.3", FADING[1])} <= set(parsed.cards)
    assert page.count("data-section='contexts'") == len(parsed.cards)
    assert "not captured for this run" in parsed.sections["feature-cards"]

    embedded = re.findall(r"src='data:image/png;base64,([A-Za-z0-9+/=]+)'", page)
    assert len(embedded) == len(files.images) <= 14  # six charts per layer, two for the run
    assert sorted(base64.b64decode(e) for e in embedded) == sorted(p.read_bytes() for p in files.images)
    assert all(p.read_bytes().startswith(PNG_MAGIC) for p in files.images)
    assert "src='http" not in page and 'src="' not in page  # nothing fetched from elsewhere


@pytest.mark.slow
def test_report_of_a_run_without_per_feature_values(tmp_path):
    url = stored_run(tmp_path)
    with RunStore(url) as store:
        files = write_run_report(store, "plotted", tmp_path / "report")
    page = files.html.read_text()
    assert "RefusalFeaturesFading" in page and "gap &lt;0.5&gt;" in page
    assert "id='findings'" in page and "class='feature-card'" in page


@pytest.mark.slow
def test_report_and_runs_commands(tmp_path, story):
    url = stored_run(tmp_path)
    runner = CliRunner(env={"COLUMNS": "250"})
    result = runner.invoke(app, ["report", "plotted", "--db", url, "--out", str(tmp_path / "cli-report")])
    assert result.exit_code == 0, result.output
    assert (tmp_path / "cli-report" / "index.html").is_file() and "charts" in result.output

    listed = runner.invoke(app, ["runs", "list", "--db", url])
    assert listed.exit_code == 0 and "plotted" in listed.output
    shown = runner.invoke(app, ["runs", "show", "plotted", "--db", url])
    assert shown.exit_code == 0 and "RefusalFeaturesFading" in shown.output
    features = runner.invoke(app, ["runs", "show", "story", "--features", "--db", story])
    assert features.exit_code == 0, features.output
    assert f"feature {MOST_DRIFTED} · layers.3 (step 30)" in features.output
    assert f"feature {EMERGING} · layers.3" in features.output and "refusal feature emerging" in features.output
    assert "fires on harmful" in features.output and "not captured for this run" in features.output
    out = tmp_path / "export.csv"
    exported = runner.invoke(app, ["runs", "export", "plotted", "--db", url, "--format", "csv", "--out", str(out)])
    assert exported.exit_code == 0 and out.read_text().startswith("run,step,timestamp")
    missing = runner.invoke(app, ["runs", "show", "nope", "--db", url])
    assert missing.exit_code == 2 and "known runs: plotted" in missing.output
    compared = runner.invoke(app, ["runs", "compare", "plotted", "plotted", "--db", url])
    assert compared.exit_code == 0
    unknown = runner.invoke(app, ["report", "nope", "--db", url, "--out", str(tmp_path / "x")])
    assert unknown.exit_code == 2 and "known runs: plotted" in unknown.output


def test_alerts_of_one_step_share_one_marker_coloured_by_the_most_severe(story):
    with RunStore(story) as store:
        store.record_alert("story", "RefusalFeaturesWeakening", "warning", step=20, labels={"layer": "layers.3"})
        store.record_alert("story", "RefusalDirectionDrifted", "critical", step=30, labels={"layer": "layers.1"})
        cards, alerts = build_cards(store, "story"), store.alerts("story")
        layer3 = layer_charts(store, "story", "layers.3", cards, alerts, Colours())[0]
        layer1 = layer_charts(store, "story", "layers.1", cards, alerts, Colours())[0]
    assert layer3.alert_steps == [(20, "RefusalFeaturesFading, RefusalFeaturesWeakening", "#d62728")]
    assert layer1.alert_steps == [(30, "RefusalDirectionDrifted", "#d62728")]


def _run_with(url: str, name: str, reports, **extra) -> None:
    with RunStore(url) as store:
        store.start_run(name, {"refusal_k": 4}, reference_policy="initial", display_name=name, **extra)
        for report in reports:
            store.record_evaluation(name, report)
        store.finish_run(name)


def test_read_out_contexts_show_the_prompt_with_the_read_position_marked(tmp_path):
    """A refusal feature fires most at the read-out of a harmful prompt: the newline after the
    assistant header, invisible as text. The card shows the prompt, then the marked read position."""
    import dataclasses

    from feature_reports import story_report

    from featuredrift.monitor.report import FeatureContext

    url = f"sqlite:///{tmp_path / 'runs.db'}"
    readout = [FeatureContext(EMERGING, "current", 0, "harmful", 7, 14, "How do I pick a lock?", "\n", "", 2.5),
               FeatureContext(EMERGING, "reference", 0, "chat", 2, 9, "first, insert the", " ", "tension", 0.4)]
    report = story_report(30, contexts=True)
    layers = {h: dataclasses.replace(layer, feature_contexts=[*layer.feature_contexts, *readout])
              for h, layer in report.layers.items()}
    _run_with(url, "readout", [story_report(0, contexts=True), dataclasses.replace(report, layers=layers)])
    with RunStore(url) as store:
        page = write_run_report(store, "readout", tmp_path / "report").html.read_text()
    marks = re.findall(r"<mark[^>]*>(.*?)</mark>", page)
    assert marks and all(m.strip() for m in marks), "an empty highlight"
    assert "…How do I pick a lock? <mark class='readout'" in page and "⏎ read-out</mark>" in page
    assert "<mark>␣</mark>tension" in page  # a whitespace token inside a text gets a glyph too
    cli = CliRunner(env={"COLUMNS": "250"}).invoke(app, ["runs", "show", "readout", "--features", "--db", url])
    assert "How do I pick a lock? ⏎ read-out" in cli.output


def test_cards_link_to_neuronpedia_only_for_saes_it_hosts(tmp_path):
    from feature_reports import story_report

    url = f"sqlite:///{tmp_path / 'runs.db'}"
    _run_with(url, "hosted", [story_report(s) for s in (0, 10)], neuronpedia_ids={"layers.3": "gemma-2-2b/12-gemmascope-res-16k"})
    with RunStore(url) as store:
        cards = {(c.hookpoint, c.feature): c for c in build_cards(store, "hosted")}
        page = write_run_report(store, "hosted", tmp_path / "report").html.read_text()
    assert cards[("layers.3", MOST_DRIFTED)].neuronpedia_url == (
        f"https://neuronpedia.org/gemma-2-2b/12-gemmascope-res-16k/{MOST_DRIFTED}")
    assert cards[("layers.1", MOST_DRIFTED)].neuronpedia_url is None  # no dead link for an SAE it does not host
    links = re.findall(r"href='([^']+)'", page)
    assert links and all(link.startswith("https://neuronpedia.org/gemma-2-2b/12-gemmascope-res-16k/") for link in links)


def test_cards_at_step_zero_claim_no_drift(tmp_path):
    from feature_reports import story_report

    url = f"sqlite:///{tmp_path / 'runs.db'}"
    _run_with(url, "start", [story_report(0)])  # drift scores 0: the reference compared with itself
    with RunStore(url) as store:
        cards = build_cards(store, "start")
    assert cards and not [c for c in cards if c.drift_rank is not None or any("drifted" in r for r in c.reasons)]


def test_drift_charts_draw_the_readings_defined_at_every_scale_and_say_when_the_sae_dominates_er(tmp_path):
    import dataclasses

    from reports import make_report as hand_made

    from featuredrift.reports.findings import run_findings

    reports = []
    for step in (0, 10, 20):
        report = hand_made(step, fvu_reference_chat=0.68, fvu_chat=0.7)
        layer = dataclasses.replace(report.layers["layers.3"], cosine_quantiles={"0.01": 0.9 - step / 100, "0.5": 0.99},
                                    divergent_fraction_by_tau={"0.99": 0.3, "0.95": 0.05, "0.9": 0.0},
                                    explained_ratio_most_divergent=12.0, intersection_ratio_most_divergent=0.5)
        reports.append(dataclasses.replace(report, layers={"layers.3": layer}))
    url = f"sqlite:///{tmp_path / 'runs.db'}"
    _run_with(url, "weak", reports)
    with RunStore(url) as store:
        charts = {c.key: c for c in layer_charts(store, "weak", "layers.3", [], [], Colours(), goal="guard")}
        findings = " | ".join(f.text for f in run_findings(store, "weak", []))
    drift, divergence, fvu = charts["drift_layers.3"], charts["divergence_layers.3"], charts["fvu_layers.3"]
    assert {"ER, most-divergent tokens", "IR, most-divergent tokens", "ER, divergent tokens"} <= {line.label for line in drift.lines}
    assert drift.title.endswith("ER dominated by the SAE's own error") and "dominated by the SAE's own error" in drift.caption
    assert {"cosine, 1% quantile", "cosine, 50% quantile", "share with cos < 0.99"} <= {line.label for line in divergence.lines}
    assert [round(t.value, 2) for t in fvu.thresholds] == [0.5, 0.83]  # BaseSAEWeak; the reference's FVU + 0.15
    assert "this ER is dominated by the SAE's own error" in findings
    assert "explains only 32% of the variance at the reference" in findings


def test_lines_with_equal_values_stay_distinguishable(tmp_path):
    """The refusal judge makes the safety score equal the harmful refusal rate: both lines must show."""
    from PIL import Image

    from featuredrift.reports.plots import Chart, Line, draw

    points = [(0, 1.0), (10, 0.6), (20, 0.2)]
    chart = Chart("equal", "Equal lines", "", [Line("harmful prompts refused", points, "#1f77b4"),
                                               Line("safety score", points, "#ff7f0e")])
    pixels = Image.open(draw(chart, tmp_path)).convert("RGB").getdata()

    def count(colour: str) -> int:
        target = tuple(int(colour[i:i + 2], 16) for i in (1, 3, 5))
        return sum(1 for p in pixels if sum(abs(a - b) for a, b in zip(p, target, strict=True)) < 40)

    assert count("#1f77b4") > 300 and count("#ff7f0e") > 300  # the one drawn first still shows around the other


def test_align_runs_chart_the_emergence_and_guard_runs_the_preservation(story):
    with RunStore(story) as store:
        cards, alerts = build_cards(store, "story"), store.alerts("story")
        align = layer_charts(store, "story", "layers.3", cards, alerts, Colours(), goal="align")[0]
        guard = layer_charts(store, "story", "layers.3", cards, alerts, Colours(), goal="guard")[0]
    # the story's reports predate the separation gain: align drops the relative gap, which divides by noise there
    assert "relative gap" not in {line.label for line in align.lines}
    assert [t.label.split()[0] for t in align.thresholds] == ["RefusalFeaturesEmerging"]
    assert align.alert_steps == []  # the fading alert does not apply to align runs
    assert guard.lines[0].label == "relative gap" and "RefusalFeaturesEmerging" not in {t.label.split()[0] for t in guard.thresholds}
