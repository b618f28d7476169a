"""featuredrift's core: probes, activation capture, drift metrics, refusal analysis, the
DriftMonitor, exporters, the run store, batch replication, the embedded model zoo and the CLI."""
