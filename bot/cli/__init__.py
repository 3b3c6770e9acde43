"""The ``loraloop`` command line: one typer app, one sub-app per area (each in its own module)."""

from __future__ import annotations

import typer

from bot.cli import botcmd, dataset, db, deploy, dev, doctor, models, retrain, train

app = typer.Typer(
    name="loraloop",
    help="A Discord bot that gets better because its domain's experts teach it.",
    no_args_is_help=True,
    pretty_exceptions_enable=False,
    add_completion=False,
)
app.add_typer(dataset.app, name="dataset")
app.add_typer(dataset.snapshot_app, name="snapshot")
app.add_typer(deploy.app, name="deploy")
app.add_typer(models.app, name="models")
app.add_typer(dev.app, name="dev")
app.add_typer(retrain.app, name="retrain")
app.add_typer(db.app, name="db")
app.command("train")(train.train)
app.command("bot")(botcmd.bot)
app.command("worker")(retrain.worker)
app.command("doctor")(doctor.doctor)


def main() -> None:
    app()
