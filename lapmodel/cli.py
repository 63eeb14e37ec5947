"""`lapmodel` command line: thin typer wrappers; each lapmodel/commands/<name>.py registers its commands."""

from __future__ import annotations

from lapdata.cli import make_app

app = make_app(
    "lapmodel",
    "Train and run the Unsup3D base and the LAP aggregate-and-personalize model from lapdata shards: "
    "train, reconstruct, evaluate, run pipelines, import published weights.",
    "lapmodel",
    ("train", "reconstruct", "evaluate", "run", "importer"),
)


def main() -> None:
    app()


if __name__ == "__main__":
    main()
