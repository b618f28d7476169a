"""Trainer callbacks: thin adapters from `transformers` Trainer events to the DriftMonitor."""
