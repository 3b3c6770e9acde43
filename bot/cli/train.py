"""``loraloop train``: the trainer's own command (``python -m trainer train``, see :mod:`trainer.__main__`) on
the bot's command line, with an option per ``TrainConfig`` field. It reads nothing from the bot's settings: the
arguments and the YAML file (``loraloop train config.yaml``, as ``llamafactory-cli train config.yaml``, or
``--config``) are all it uses."""

from trainer.__main__ import train

__all__ = ["train"]
