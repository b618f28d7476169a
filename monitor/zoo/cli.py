"""`featuredrift zoo …` commands."""

import typer

app = typer.Typer(help="Build and inspect the embedded model zoo.", no_args_is_help=True)
