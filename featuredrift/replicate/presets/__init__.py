"""Bundled replication presets (YAML); see README.md here."""
