"""Grafana dashboards (package data) and their upload through grafana-client."""
