"""Strings from users and stores made safe to print: one line, every control character visible.

A run name, an alert message or a probe text is data; written raw to a terminal or a log line,
an ANSI escape in it recolours the terminal and a newline forges a line of output.
"""

from __future__ import annotations

from typing import Any


def printable(text: Any) -> str:
    """`text` on one line: every non-printable character as its escape (`\\x1b`, `\\n`, `\\u2028`)."""
    text = str(text)
    if text.isprintable():
        return text
    return "".join(c if c.isprintable() else c.encode("unicode_escape").decode("ascii") for c in text)
