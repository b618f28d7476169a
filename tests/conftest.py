"""Shared pytest configuration for the featuredrift suite."""

# Real servers on loopback (Pushgateway, Prometheus, Alertmanager, PostgreSQL): see tests/servers.py.
from servers import *  # noqa: F401,F403

# The sink/no-BOS test pair (a Qwen2 model with a planted attention sink): see tests/sink_fixtures.py.
from sink_fixtures import *  # noqa: F401,F403

# Embedded model zoo fixtures (zoo_nano, zoo_nano_models): see tests/zoo_fixtures.py.
from zoo_fixtures import *  # noqa: F401,F403
