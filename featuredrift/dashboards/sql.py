"""PostgreSQL queries of the step-indexed Grafana panels, read straight from the run store.

Prometheus keeps samples by wall-clock time; the run store keeps every evaluation by training
step, so these panels answer "what happened at step 400" and compare runs step by step. The
queries use only Grafana's SQL template syntax: `$run` and `$layer` are multi-value variables,
which Grafana expands to a quoted, comma-separated list ('a','b'), hence `IN ($run)`.

`metric_values.labels` is canonical JSON text (see run_store.labels_key), read with `::jsonb`.
The panels about "the latest evaluation" find it with one index probe per selected run (the
`(run_id, step)` index, newest first), never with a per-row subquery: they stay fast on a store
of a thousand runs (`featuredrift bench --store`).
"""

from __future__ import annotations

# One row per stored metric sample, with its run and step.
_SAMPLES = """FROM metric_values v
JOIN evaluations e ON e.id = v.evaluation_id
JOIN runs r ON r.id = e.run_id"""

# The newest evaluation of each selected run (name, run id, evaluation id, step).
_LATEST = """latest AS (
  SELECT r.name, r.id AS run_id, newest.id, newest.step
  FROM runs r CROSS JOIN LATERAL (
    SELECT e.id, e.step FROM evaluations e WHERE e.run_id = r.id ORDER BY e.step DESC LIMIT 1) newest
  WHERE r.name IN ($run))"""

RUN_VARIABLE = "SELECT name FROM runs ORDER BY created_at DESC"
# Layers the selected runs' newest evaluations measured (every evaluation measures all of a run's layers).
LAYER_VARIABLE = f"""WITH {_LATEST}
SELECT DISTINCT v.labels::jsonb ->> 'layer' AS layer
FROM latest l JOIN metric_values v ON v.evaluation_id = l.id
WHERE v.labels::jsonb ->> 'layer' IS NOT NULL
ORDER BY 1"""


def _label(name: str) -> str:
    return f"coalesce(v.labels::jsonb ->> '{name}', '')"


def metric_by_step(metric: str, legend: tuple[str, ...] = (), *, layered: bool = True) -> str:
    """(step, series, value) of one metric for the selected runs (and layers), oldest step first.

    `series` names the line: the run, the layer, then the values of the `legend` labels, so
    two label sets of one metric (model=current vs reference) stay two lines.
    """
    parts = ["r.name"] + ([_label("layer")] if layered else []) + [_label(name) for name in legend]
    series = " || ' ' || ".join(parts)
    layer_filter = "\n  AND v.labels::jsonb ->> 'layer' IN ($layer)" if layered else ""
    return f"""SELECT e.step AS step, {series} AS series, v.value AS value
{_SAMPLES}
WHERE r.name IN ($run) AND v.name = '{metric}'{layer_filter}
ORDER BY e.step, series"""


LATEST_DRIFTED_FEATURES = f"""WITH {_LATEST}
SELECT l.name AS run, d.hookpoint AS layer, l.step AS step, d.rank + 1 AS "rank",
  d.feature AS feature, d.subset AS subset, d.score AS drift_score,
  d.freq_reference AS firing_reference, d.freq_current AS firing_now,
  d.mean_reference AS mean_activation_reference, d.mean_current AS mean_activation_now
FROM latest l JOIN drifted_features d ON d.evaluation_id = l.id
WHERE d.hookpoint IN ($layer)
ORDER BY l.name, d.hookpoint, d.rank"""

# The top-activating probe contexts of every feature the newest evaluation lists, reference beside now.
LATEST_FEATURE_CONTEXTS = f"""WITH {_LATEST}
SELECT l.name AS run, c.hookpoint AS layer, l.step AS step, c.feature AS feature,
  CASE c.model WHEN 'reference' THEN 'reference' ELSE 'now' END AS model, c.rank + 1 AS "rank",
  c.left_text || '【' || c.token || '】' || c.right_text AS context, c.token AS token,
  c.activation AS activation, c.subset AS subset
FROM latest l JOIN feature_contexts c ON c.evaluation_id = l.id
WHERE c.hookpoint IN ($layer)
ORDER BY l.name, c.hookpoint, c.feature, c.model DESC, c.rank"""

# Drift score over steps of the features the newest evaluation lists as most drifted.
# A run's drifted-feature history read once: every row knows whether its feature is listed at the
# newest evaluation (a window over the run's rows), so no per-feature lookups across all runs.
LATEST_DRIFTED_FEATURES_BY_STEP = f"""WITH {_LATEST}
SELECT step, name || ' ' || hookpoint || ' feature ' || feature AS series, max(score) AS value
FROM (
  SELECT e.step, l.name, d.hookpoint, d.feature, d.score,
    bool_or(e.id = l.id) OVER (PARTITION BY l.run_id, d.hookpoint, d.feature) AS listed_now
  FROM latest l
  JOIN evaluations e ON e.run_id = l.run_id
  JOIN drifted_features d ON d.evaluation_id = e.id
  WHERE d.hookpoint IN ($layer)) history
WHERE listed_now AND score IS NOT NULL
GROUP BY step, name, hookpoint, feature
ORDER BY step, series"""

# The headline refusal sets are the rows that carry d̄ (the NNLS reconstructions' sets do not).
REFUSAL_FEATURES_OVER_STEPS = """SELECT r.name AS run, f.hookpoint AS layer, f.feature AS feature,
  bool_or(f.source = 'reference') AS reference_refusal_feature,
  min(e.step) FILTER (WHERE f.source = 'current') AS first_step_in_top_k,
  max(e.step) FILTER (WHERE f.source = 'current') AS last_step_in_top_k,
  count(*) FILTER (WHERE f.source = 'current') AS evaluations_in_top_k,
  min(f.rank) FILTER (WHERE f.source = 'current') + 1 AS best_rank,
  (array_agg(f.diff_in_means ORDER BY e.step DESC))[1] AS latest_diff_in_means
FROM refusal_features f
JOIN evaluations e ON e.id = f.evaluation_id
JOIN runs r ON r.id = e.run_id
WHERE r.name IN ($run) AND f.hookpoint IN ($layer) AND f.diff_in_means IS NOT NULL
GROUP BY r.name, f.hookpoint, f.feature
ORDER BY r.name, f.hookpoint, last_step_in_top_k DESC NULLS LAST, best_rank"""

REFERENCE_REFUSAL_FEATURES_BY_STEP = """SELECT e.step AS step,
  r.name || ' ' || f.hookpoint || ' feature ' || f.feature AS series, f.diff_in_means AS value
FROM refusal_features f
JOIN evaluations e ON e.id = f.evaluation_id
JOIN runs r ON r.id = e.run_id
WHERE r.name IN ($run) AND f.hookpoint IN ($layer) AND f.source = 'reference' AND f.diff_in_means IS NOT NULL
ORDER BY e.step, series"""

ALERTS_BY_STEP = """SELECT r.name AS run, a.name AS alert, a.severity AS severity, a.status AS status,
  a.step AS fired_at_step, a.resolved_step AS resolved_at_step, a.message AS message,
  a.checkpoint AS last_safe_checkpoint
FROM alerts a
JOIN runs r ON r.id = a.run_id
WHERE r.name IN ($run)
ORDER BY r.name, a.step NULLS LAST, a.name"""

# Per (run, subset, category): the newest evaluation's logit score and the newest rate measured.
LATEST_CATEGORY_REFUSALS = """SELECT r.name AS run, c.subset AS prompts, c.category AS category, c.prompts AS probes,
  (array_agg(c.refusal_rate ORDER BY e.step DESC) FILTER (WHERE c.refusal_rate IS NOT NULL))[1] AS refusal_rate,
  max(e.step) FILTER (WHERE c.refusal_rate IS NOT NULL) AS refusal_rate_step,
  (array_agg(c.refusal_token_probability ORDER BY e.step DESC))[1] AS refusal_token_probability,
  (array_agg(c.refusal_token_logodds ORDER BY e.step DESC))[1] AS refusal_token_logodds,
  max(e.step) AS step
FROM category_refusals c
JOIN evaluations e ON e.id = c.evaluation_id
JOIN runs r ON r.id = e.run_id
WHERE r.name IN ($run)
GROUP BY r.name, c.subset, c.category, c.prompts
ORDER BY r.name, c.subset, c.category"""

CATEGORY_REFUSAL_RATE_BY_STEP = """SELECT e.step AS step, r.name || ' ' || c.subset || ' ' || c.category AS series,
  c.refusal_rate AS value
FROM category_refusals c
JOIN evaluations e ON e.id = c.evaluation_id
JOIN runs r ON r.id = e.run_id
WHERE r.name IN ($run) AND c.refusal_rate IS NOT NULL
ORDER BY e.step, series"""
# Each run's state as recorded, and whether it is stale: still 'running' on record but silent for
# more than three of its own heartbeat intervals (most likely dead; runs recorded before heartbeats:
# since the store last wrote to them). Derived here; the stored
# status is never rewritten. Also its newest step, newest checkpoint and monitoring goal.
RUNS_STATE = """SELECT r.name AS run,
  CASE WHEN r.status = 'running' AND coalesce(r.heartbeat_at, r.updated_at)
            < now() - make_interval(secs => 3 * coalesce(r.heartbeat_interval_s, 60)) THEN 'stale'
       ELSE r.status END AS state,
  coalesce(r.heartbeat_at, r.updated_at) AS last_event,
  extract(epoch FROM now() - coalesce(r.heartbeat_at, r.updated_at)) AS silent_s,
  r.heartbeat_interval_s AS expected_every_s,
  (SELECT max(e.step) FROM evaluations e WHERE e.run_id = r.id) AS last_step,
  (SELECT max(c.step) FROM checkpoints c WHERE c.run_id = r.id) AS newest_checkpoint_step,
  r.extra ->> 'monitoring_goal' AS goal, r.extra -> 'error' ->> 'type' AS error
FROM runs r
WHERE r.name IN ($run)
ORDER BY r.created_at DESC"""
