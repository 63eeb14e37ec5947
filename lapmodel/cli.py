"""`lapmodel` command line: thin typer wrappers; each lapmodel/commands/<name>.py registers its commands."""

from __future__ import annotations

import importlib

import typer

app = typer.Typer(
    name="lapmodel",
    help="Train and run the Unsup3D base and the LAP aggregate-and-personalize model from lapdata shards: "
    "train, reconstruct, evaluate, run pipelines.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
)

# Each module defines register(app: typer.Typer) and imports its heavy dependencies inside the commands.
COMMAND_MODULES = ("train", "reconstruct", "evaluate", "run")

for _name in COMMAND_MODULES:
    try:
        _mod = importlib.import_module(f"lapmodel.commands.{_name}")
    except ModuleNotFoundError as _e:  # a command module not written yet
        if _e.name != f"lapmodel.commands.{_name}":
            raise
        continue
    _mod.register(app)


def main() -> None:
    app()


if __name__ == "__main__":
    main()
