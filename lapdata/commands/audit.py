"""`lapdata audit DIR [--json] [--no-contents]`: exit 0 when shards and manifests agree, 1 with the faults otherwise."""

from __future__ import annotations

import json

import typer

from lapdata.core.cliconfig import argument, option, with_parameters
from lapdata.core.errors import cli_guard

EXAMPLES = "Examples:\n\n  lapdata audit /data/lap/celeba\n\n  lapdata audit /data/lap/celeba --json --no-contents"


def register(app: typer.Typer) -> None:
    def audit_cmd(root: str, as_json: bool, contents: bool) -> None:
        """Check a dataset: schemas, shard checksums and contents, counts, split leakage, min-images."""
        from lapdata.dataset.audit.run import audit_dataset, print_report

        rep = audit_dataset(root, contents=contents)
        if as_json:
            typer.echo(json.dumps(rep.to_json(), indent=1, sort_keys=True))
        else:
            print_report(rep)
        if not rep.ok:
            raise SystemExit(1)

    params = [argument("root", str, "dataset folder written by a lapdata step"),
              option("as_json", bool, False, "--json", help="print the report as JSON"),
              option("contents", bool, True, "--contents/--no-contents",
                     help="read every sample (default) or only check files, checksums and counts")]
    app.command("audit", epilog=EXAMPLES)(cli_guard(with_parameters(audit_cmd, params)))
