"""Fixtures for the embedded model zoo (featuredrift.zoo), imported by conftest.py.

The nano zoo is built once into the default cache folder ($FEATUREDRIFT_HOME/zoo/nano or
~/.cache/featuredrift/zoo/nano) and reused by later sessions; the build lock makes parallel
sessions share a single build.
"""

import pytest

__all__ = ["zoo_nano", "zoo_nano_models"]


@pytest.fixture(scope="session")
def zoo_nano():
    """`ZooPaths` of the nano zoo (base/chat models, base SAE, probes, data)."""
    from featuredrift.zoo import ensure_zoo

    return ensure_zoo("nano", progress=False)


@pytest.fixture(scope="session")
def zoo_nano_models(zoo_nano):
    """`(base, chat, tokenizer)` of the nano zoo, in eval mode. Treat them as read-only."""
    from featuredrift.zoo import load_zoo_models

    base, _ = load_zoo_models(zoo_nano, "base")
    chat, tokenizer = load_zoo_models(zoo_nano, "chat")
    return base, chat, tokenizer
