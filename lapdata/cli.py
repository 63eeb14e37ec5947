"""`lapdata` command line: thin typer wrappers; each lapdata/commands/<name>.py registers its commands."""

from __future__ import annotations

import importlib

import typer

app = typer.Typer(
    name="lapdata",
    help="Build identity-grouped WebDataset archives for LAP: ingest photo collections, synthesize multi-pose sets, "
    "parse face masks, audit and merge.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
)

# Each module defines register(app: typer.Typer) and imports its heavy dependencies inside the commands.
COMMAND_MODULES = ("ingest", "audit", "synthetic", "parse")

for _name in COMMAND_MODULES:
    try:
        _mod = importlib.import_module(f"lapdata.commands.{_name}")
    except ModuleNotFoundError as _e:  # a command module not written yet
        if _e.name != f"lapdata.commands.{_name}":
            raise
        continue
    _mod.register(app)


def main() -> None:
    app()


if __name__ == "__main__":
    main()
