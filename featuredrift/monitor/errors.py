"""The monitor's one error type: what it was given cannot work (raised at attach time)."""


class MonitorError(ValueError):
    """The monitor cannot run with what it was given (raised at attach time)."""
