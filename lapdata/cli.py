"""`lapdata` command line: thin typer wrappers; each lapdata/commands/<name>.py registers its commands."""

from __future__ import annotations

import importlib
from typing import Sequence

import typer


def make_app(name: str, help: str, package: str, modules: Sequence[str]) -> typer.Typer:
    """A typer app whose commands come from ``{package}.commands.<module>.register(app)``.

    Command modules import their heavy dependencies inside the commands, so ``--help`` stays fast.
    """
    app = typer.Typer(name=name, help=help, no_args_is_help=True, add_completion=False,
                      pretty_exceptions_enable=False)

    @app.callback()
    def _setup() -> None:  # every command: plain log lines on stderr, progress bars only on a terminal
        from lapdata.core.logs import setup_logging

        setup_logging()

    for mod_name in modules:
        try:
            mod = importlib.import_module(f"{package}.commands.{mod_name}")
        except ModuleNotFoundError as e:  # an optional command module that is not there
            if e.name != f"{package}.commands.{mod_name}":
                raise
            continue
        mod.register(app)
    return app


app = make_app(
    "lapdata",
    "Build identity-grouped WebDataset archives for LAP: ingest photo collections, synthesize multi-pose sets, "
    "parse face masks, audit and merge.",
    "lapdata",
    ("ingest", "audit", "synthetic", "parse"),
)


def main() -> None:
    app()


if __name__ == "__main__":
    main()
