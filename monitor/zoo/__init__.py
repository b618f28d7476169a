"""The embedded model zoo: a tiny base/chat model pair, its SAE and probe sets, built locally."""
