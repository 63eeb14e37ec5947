"""`lapdata build-synthetic`: thin typer wrapper over lapdata.synthetic.build.run_synthetic."""

from __future__ import annotations

from enum import Enum
from typing import Optional

import typer

from ..errors import LapError, cli_guard


class BackendName(str, Enum):
    procedural = "procedural"
    ict = "ict"
    stylegan = "stylegan"
    diffusers = "diffusers"


def _pair(text: str, what: str) -> tuple[float, float]:
    try:
        a, b = (float(x) for x in text.split(","))
    except ValueError:
        raise LapError(f"{what} must look like LO,HI (e.g. -60,60), got {text!r}") from None
    return a, b


def register(app: typer.Typer) -> None:
    @app.command("build-synthetic")
    @cli_guard
    def build_synthetic_cmd(
        backend: BackendName = typer.Option(BackendName.procedural, help="procedural (no files) | ict | stylegan | diffusers"),
        out: str = typer.Option(..., "--out", "-o", help="output dataset folder (rerun the same command to resume)"),
        identities: int = typer.Option(100, help="number of identities"),
        poses: int = typer.Option(15, help="views per identity (yaws evenly over --yaw-range)"),
        size: int = typer.Option(256, help="image side in pixels"),
        yaw_range: str = typer.Option("-45,45", help="LO,HI yaw in degrees (keep it inside the model's +-60 rotation range)"),
        seed: int = typer.Option(0, help="run seed (identity i uses a seed derived from (seed, i)); also the split seed"),
        model: Optional[str] = typer.Option(None, help="ict: the ICT-FaceKit FaceXModel folder"),
        generator: Optional[str] = typer.Option(None, help="stylegan: TorchScript generator (latent -> image)"),
        mapping: Optional[str] = typer.Option(None, help="stylegan: TorchScript mapping network (z -> w), optional"),
        pose_boundary: Optional[str] = typer.Option(None, help="stylegan: InterfaceGAN pose boundary .npy"),
        yaw_scale: float = typer.Option(0.05, help="stylegan: boundary distance per degree of yaw"),
        latent_dim: int = typer.Option(0, help="stylegan: z size for the mapping network (0: its z_dim, else the boundary size)"),
        pipeline: Optional[str] = typer.Option(None, help="diffusers: local pipeline folder (save_pretrained)"),
        prompt: Optional[str] = typer.Option(None, help="diffusers: text prompt (pipelines that take one)"),
        steps: int = typer.Option(25, help="diffusers: inference steps"),
        condition: str = typer.Option("normal", help="diffusers: conditioning maps, normal | depth"),
        id_filter: str = typer.Option("auto", help="auto (arcface with --id-model, else dlib) | dlib | arcface | none"),
        id_model: Optional[str] = typer.Option(None, help="ArcFace recognition .onnx (threshold 0.6)"),
        id_threshold: float = typer.Option(0.0, help="cosine-to-frontal threshold (0: the embedder's default)"),
        ssaa: int = typer.Option(1, help="3D backends: supersampling factor (anti-aliasing)"),
        expression_scale: float = typer.Option(1.0, help="3D backends: scale of the mild per-view expressions (0: neutral)"),
        light: str = typer.Option("random", help="3D backends: random | frontal"),
        background: str = typer.Option("random", help="3D backends: random (a new one per view) | gray"),
        iod: float = typer.Option(0.0, help="3D backends: inter-ocular distance / side of a frontal view (0: the alignment template of lapdata ingest)"),
        eye_y: float = typer.Option(0.0, help="3D backends: eye line / side from the top (0: the alignment template)"),
        workers: int = typer.Option(1, help="worker processes"),
        part: str = typer.Option("0/1", help="build part I of N (disjoint, deterministic); join with lapdata merge"),
        device: str = typer.Option("auto", help="auto | cpu | cuda"),
        samples_per_shard: int = typer.Option(64, help="identities per shard"),
        image_format: str = typer.Option("jpg", help="jpg | png"),
        progress: bool = typer.Option(True, "--progress/--no-progress"),
    ) -> None:
        """Multi-pose synthetic identities -> identity-grouped WebDataset shards + Parquet manifests (resumable),
        with 3D ground truth (depth, canonical depth, normals, mask) for procedural and ict."""
        from ..synthetic.build import SynthConfig, run_synthetic, summary_line
        from ..writer import parse_part

        try:
            part_t = parse_part(part)
        except ValueError as e:
            raise LapError(str(e)) from None
        cfg = SynthConfig(
            backend=backend.value, out=out, identities=identities, poses=poses, size=size,
            yaw_range=_pair(yaw_range, "--yaw-range"), seed=seed, model=model or "", generator=generator or "",
            mapping=mapping or "", pose_boundary=pose_boundary or "", yaw_scale=yaw_scale, latent_dim=latent_dim,
            pipeline=pipeline or "", steps=steps, condition=condition, id_filter=id_filter, id_model=id_model or "",
            id_threshold=id_threshold, ssaa=ssaa, expression_scale=expression_scale, light=light, workers=workers,
            background=background, iod=iod, eye_y=eye_y,
            part=part_t, device=device, samples_per_shard=samples_per_shard, image_ext=image_format, progress=progress,
            **({"prompt": prompt} if prompt else {}),
        )
        stats = run_synthetic(cfg)
        typer.echo(f"build-synthetic: {summary_line(stats, out)}")
        if stats.get("failed"):
            raise SystemExit(1)
