"""`lapdata build-synthetic`: multi-pose synthetic identity sets (options derived from SynthConfig)."""

from __future__ import annotations

import typer

from lapdata.core.cliconfig import config_parameters, config_values, with_parameters
from lapdata.core.errors import cli_guard

EXAMPLES = """Examples:

  lapdata build-synthetic --backend procedural --identities 2000 --poses 15 --size 256 --out /data/lap/synth

  lapdata build-synthetic --backend ict --model ~/ICT-FaceKit/FaceXModel --identities 30000 --out /data/lap/ict

  lapdata build-synthetic --backend stylegan --generator stylegan_ffhq.pth --pose-boundary stylegan_ffhq_pose_boundary.npy --out s
"""


def register(app: typer.Typer) -> None:
    from lapdata.synthetic.build import SynthConfig

    def build_synthetic_cmd(**fields) -> None:
        """Multi-pose synthetic identities -> identity-grouped WebDataset shards + Parquet manifests (resumable),
        with 3D ground truth (depth, canonical depth, normals, mask) for procedural and ict."""
        from lapdata.synthetic.build import run_synthetic, summary_line

        cfg = SynthConfig(**config_values(SynthConfig, fields))
        stats = run_synthetic(cfg)
        typer.echo(f"build-synthetic: {summary_line(stats, cfg.out)}")
        if stats.get("failed"):
            raise SystemExit(1)

    params = config_parameters(SynthConfig, required=("out",), short={"out": "-o"},
                               flags={"image_ext": "--image-format"})
    app.command("build-synthetic", epilog=EXAMPLES)(cli_guard(with_parameters(build_synthetic_cmd, params)))
