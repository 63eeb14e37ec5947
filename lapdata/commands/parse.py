"""`lapdata parse-masks DIR`: store a 19-class face label map per view (seg), mark hard views, swap in the result."""

from __future__ import annotations

import json
from enum import Enum
from typing import Optional

import typer

from ..errors import cli_guard


class Parser(str, Enum):
    auto = "auto"
    bisenet = "bisenet"
    landmarks = "landmarks"
    ground_truth = "ground-truth"


def register(app: typer.Typer) -> None:
    @app.command("parse-masks")
    @cli_guard
    def parse_masks_cmd(
        root: str = typer.Argument(..., help="dataset folder (lapdata ingest / build-synthetic output)"),
        parser: Optional[Parser] = typer.Option(None, help="auto (default) = ground truth where present, else "
                                                "bisenet with --weights, else landmarks"),
        weights: Optional[str] = typer.Option(None, help="BiSeNet weights: face-parsing.PyTorch 79999_iter.pth or "
                                              "facexlib parsing_bisenet.pth"),
        min_face_fraction: Optional[float] = typer.Option(None, help="views whose face region is a smaller fraction "
                                                          "of the image are marked hard (default 0.25)"),
        batch_size: Optional[int] = typer.Option(None, help="images per BiSeNet forward pass (default 8)"),
        device: Optional[str] = typer.Option(None, help="cpu (default), cuda, cuda:1, ..."),
        workers: Optional[int] = typer.Option(None, help="worker processes, one shard each (default 1)"),
        input_size: Optional[int] = typer.Option(None, help="BiSeNet input side (default 512, as trained)"),
        drop_failed: bool = typer.Option(False, "--drop-failed", help="views that cannot be parsed become error "
                                         "rows and leave the shards (default: kept, empty label map, marked hard)"),
        keep_old: bool = typer.Option(False, "--keep-old", help="keep the previous version as DIR.pre-parse-<time>"),
        config: Optional[str] = typer.Option(None, help="YAML with a parse_masks section (ParseConfig fields, "
                                             "e.g. masks: {face: [...]}); flags given here override it"),
        as_json: bool = typer.Option(False, "--json", help="print the report as JSON"),
        progress: bool = typer.Option(True, "--progress/--no-progress"),
    ) -> None:
        """Parse every view's face into a 19-class label map (seg) and mark hard views; resumable."""
        from ..config import load_config, read_yaml
        from ..parsing.parse import ParseConfig, parse_masks

        flags = dict(parser=parser.value if parser else None, weights=weights, min_face_fraction=min_face_fraction,
                     batch_size=batch_size, device=device, workers=workers, input_size=input_size,
                     drop_failed=drop_failed or None, keep_old=keep_old or None)
        base = dict(read_yaml(config).get("parse_masks") or {}) if config else {}
        base.update({k: v for k, v in flags.items() if v is not None})
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

