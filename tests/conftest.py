"""Shared pytest configuration for the featuredrift suite."""

# Real servers on loopback (Pushgateway, Prometheus, Alertmanager, PostgreSQL): see tests/servers.py.
from servers import *  # noqa: F401,F403
