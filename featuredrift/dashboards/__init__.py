"""Grafana dashboards: generated from one spec, shipped as JSON, uploaded with grafana-client."""
