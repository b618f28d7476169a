"""Alert definitions (the one source of truth), Prometheus rules, Alertmanager config and the
in-process alert engine used when no Prometheus is deployed."""
