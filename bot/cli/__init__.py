"""The ``loraloop`` command line: one typer app, one sub-app per area (each in its own module)."""

from __future__ import annotations

from typing import Annotated

import typer

from bot.cli import botcmd, dataset, db, deploy, dev, doctor, models, preferences, retrain, retrieval, review, train
from bot.cli.chat import chat

app = typer.Typer(
    name="loraloop",
    help="A Discord bot that gets better because its domain's experts teach it.",
    no_args_is_help=True,
    pretty_exceptions_enable=False,
    add_completion=False,
    # -h everywhere, as people type it; typer passes the setting down to every sub-command.
    context_settings={"help_option_names": ["-h", "--help"]},
)


def version() -> str:
    from importlib.metadata import PackageNotFoundError
    from importlib.metadata import version as installed

    try:
        return installed("loraloop")
    except PackageNotFoundError:  # run from a checkout that was never installed
        return "unknown (not installed)"


def _print_version(value: bool) -> None:
    if value:
        typer.echo(f"loraloop {version()}")
        raise typer.Exit()


@app.callback()
def _main(
    _version: Annotated[bool, typer.Option("--version", callback=_print_version, is_eager=True,
                                           help="Print the version and exit.")] = False,
) -> None:
    """A Discord bot that gets better because its domain's experts teach it."""


app.add_typer(dataset.app, name="dataset")
app.add_typer(dataset.snapshot_app, name="snapshot")
app.add_typer(preferences.app, name="preferences")
app.add_typer(review.app, name="review")
app.add_typer(retrieval.app, name="retrieval")
app.add_typer(deploy.app, name="deploy")
app.add_typer(models.app, name="models")
app.add_typer(dev.app, name="dev")
app.add_typer(retrain.app, name="retrain")
app.add_typer(db.app, name="db")
app.command("train")(train.train)
app.command("bot")(botcmd.bot)
app.command("chat")(chat)
app.command("worker")(retrain.worker)
app.command("doctor")(doctor.doctor)


def main() -> None:
    app()
