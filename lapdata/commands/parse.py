"""`lapdata parse-masks DIR`: store a 19-class face label map per view (seg), mark hard views, swap in the result.

Options derive from ``lapdata.parsing.parse.ParseConfig``; ``--config`` reads its ``parse_masks`` section first."""

from __future__ import annotations

import json
from typing import Optional

import typer

from lapdata.core.cliconfig import argument, config_parameters, config_values, option, with_parameters
from lapdata.core.errors import cli_guard

EXAMPLES = """Examples:

  lapdata parse-masks /data/lap/celeba --parser bisenet --weights ~/weights/79999_iter.pth --device cuda

  lapdata parse-masks /data/lap/synth          # ground truth where present, else the offline landmark parser
"""


def register(app: typer.Typer) -> None:
    from lapdata.parsing.parse import ParseConfig

    def parse_masks_cmd(root: str, *, config: Optional[str], as_json: bool, progress: bool, **fields) -> None:
        """Parse every view's face into a 19-class label map (seg) and mark hard views; resumable."""
        from lapdata.core.config import load_config, read_yaml
        from lapdata.parsing.parse import parse_masks

        base = dict(read_yaml(config).get("parse_masks") or {}) if config else {}
        base.update({k: v for k, v in config_values(ParseConfig, fields).items() if v is not None})
        cfg = load_config(ParseConfig, base)
        rep = parse_masks(root, cfg, progress=progress)
        if as_json:
            typer.echo(json.dumps(rep.__dict__, indent=1, sort_keys=True, default=str))
        else:
            st = rep.stats
            typer.echo(f"parsed {st.get('views_parsed')} views of {root} ({st.get('by_parser')}); "
                       f"hard {st.get('hard')} (face fraction < {cfg.min_face_fraction:g}); "
                       f"parse errors {st.get('parse_errors') or 0}; face fraction median "
                       f"{st.get('face_fraction', {}).get('p50')}")
            if rep.contact_sheet:
                typer.echo(f"contact sheet: {rep.contact_sheet}")
        if rep.failed_shards:
            for f in rep.failed_shards:
                typer.echo(f"error: shard {f['shard']}: {f['error']}", err=True)
            typer.echo(f"{len(rep.failed_shards)} shard(s) failed; {root} is unchanged (the new version waits in "
                       f"{root}.parse-tmp); rerun the same command to retry", err=True)
            raise SystemExit(1)
        if rep.audit_faults:
            for f in rep.audit_faults[:20]:
                typer.echo(f"audit: {f}", err=True)
            typer.echo(f"the new version failed the audit ({len(rep.audit_faults)} faults); {root} is unchanged",
                       err=True)
            raise SystemExit(1)

    params = [argument("root", str, "dataset folder (lapdata ingest / build-synthetic output)"),
              option("config", Optional[str], None, "--config", "-c",
                     help="YAML with a parse_masks section (ParseConfig fields, e.g. masks: {face: [...]}); "
                          "options given here override it"),
              *config_parameters(ParseConfig, override=True),
              option("as_json", bool, False, "--json", help="print the report as JSON"),
              option("progress", bool, True, "--progress/--no-progress", help="progress bar (only on a terminal)")]
    app.command("parse-masks", epilog=EXAMPLES)(cli_guard(with_parameters(parse_masks_cmd, params)))
