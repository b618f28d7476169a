"""The HTML run report: findings, plots and feature cards, read from the run store."""
