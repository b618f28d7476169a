"""Render the restricted Prometheus alert templates used in alert annotations.

Only two forms are allowed in `AlertDefinition` texts, so the engine renders exactly what
Prometheus renders: `{{ $labels.NAME }}` and `{{ printf "FMT" $value }}` (FMT a single
%-verb such as `%.3g` or `%.0f`; Go's and Python's formatting agree for these).
"""

from __future__ import annotations

import re
from collections.abc import Mapping

_TEMPLATE = re.compile(r"\{\{\s*(.*?)\s*\}\}")
_LABEL = re.compile(r"^\$labels\.([A-Za-z_][A-Za-z0-9_]*)$")
_PRINTF = re.compile(r'^printf\s+"(%[-+ #0-9.]*[gfde])"\s+\$value$')


def render(text: str, labels: Mapping[str, str], value: float) -> str:
    """Fill `{{ … }}` placeholders; an unsupported form is an error naming it."""

    def substitute(match: re.Match[str]) -> str:
        body = match.group(1)
        label = _LABEL.match(body)
        if label:
            # Prometheus renders a missing label as "<no value>".
            return labels.get(label.group(1), "<no value>")
        printf = _PRINTF.match(body)
        if printf:
            return printf.group(1) % value
        raise ValueError(
            f"alert template: expected '{{{{ $labels.NAME }}}}' or '{{{{ printf \"%.3g\" $value }}}}', "
            f"found '{{{{ {body} }}}}'"
        )

    return _TEMPLATE.sub(substitute, text)


def check(text: str) -> None:
    """Raise if the text uses a template form the engine cannot render."""
    render(text, {}, 0.0)
