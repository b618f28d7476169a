"""`featuredrift sae …` commands."""

import typer

app = typer.Typer(help="Inspect and train sparse autoencoders.", no_args_is_help=True)
