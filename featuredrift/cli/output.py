"""What the CLI prints of stored strings (run names, alert messages, labels, probe text, paths).

They are data, never markup or terminal control: rich markup in them is escaped and control
characters (ANSI escapes, raw newlines, carriage returns) are written as visible escapes, so a
hostile run name can neither break a table, nor recolour the terminal, nor forge an output line.
"""

from __future__ import annotations

from typing import Any

import typer
from rich.markup import escape
from rich.table import Table

from featuredrift.text import printable


def shown(text: Any) -> str:
    """`text` for rich: printable, with its markup escaped."""
    return escape(printable(text))


def echo(text: Any, *, err: bool = False) -> None:
    """One plain output line (no markup is read from it) with control characters made visible."""
    typer.echo(printable(text), err=err)


def error_line(error: Exception | str) -> None:
    typer.secho(f"error: {printable(error)}", fg=typer.colors.RED, err=True)


class StoredTextTable(Table):
    """A rich table whose string title, headers and cells are shown as text, never read as markup;
    a cell meant to carry markup is passed as a `rich.text.Text`."""

    def __init__(self, *headers: Any, title: Any = None, **options: Any) -> None:
        super().__init__(*headers, title=shown(title) if isinstance(title, str) else title, **options)

    def add_column(self, header: Any = "", *args: Any, **options: Any) -> None:
        super().add_column(shown(header) if isinstance(header, str) else header, *args, **options)

    def add_row(self, *cells: Any, **options: Any) -> None:
        super().add_row(*(shown(cell) if isinstance(cell, str) else cell for cell in cells), **options)
