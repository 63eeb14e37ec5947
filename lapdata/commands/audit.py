"""`lapdata audit DIR [--json] [--no-contents]`: exit 0 when shards and manifests agree, 1 with the faults otherwise."""

from __future__ import annotations

import json

import typer

from ..errors import cli_guard


def register(app: typer.Typer) -> None:
    @app.command("audit", epilog="Examples:\n\n  lapdata audit /data/lap/celeba\n\n  lapdata audit /data/lap/celeba --json --no-contents")
    @cli_guard
    def audit_cmd(
        root: str = typer.Argument(..., help="dataset folder written by a lapdata step"),
        as_json: bool = typer.Option(False, "--json", help="print the report as JSON"),
        contents: bool = typer.Option(True, "--contents/--no-contents",
                                      help="read every sample (default) or only check files, checksums and counts"),
    ) -> None:
        """Check a dataset: schemas, shard checksums and contents, counts, split leakage, min-images."""
        from ..audit import audit_dataset, print_report

        rep = audit_dataset(root, contents=contents)
        if as_json:
            typer.echo(json.dumps(rep.to_json(), indent=1, sort_keys=True))
        else:
            print_report(rep)
        if not rep.ok:
            raise SystemExit(1)
