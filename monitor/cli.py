"""The `featuredrift` command line. Each command group lives next to the code it drives;
this module only assembles them. Sub-modules import heavy libraries (torch, transformers)
inside their commands so that `featuredrift --help` stays instant."""

from __future__ import annotations

import typer

from monitor.zoo.cli import app as zoo_app
from sae_store.cli import app as sae_app

app = typer.Typer(
    name="featuredrift",
    help="Monitor how fine-tuning makes a model's sparse-autoencoder features drift.",
    no_args_is_help=True,
    pretty_exceptions_show_locals=False,
)
app.add_typer(zoo_app, name="zoo")
app.add_typer(sae_app, name="sae")


def main() -> None:
    app()


if __name__ == "__main__":
    main()
