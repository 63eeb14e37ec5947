"""The published StyleGAN generators checked against their reference implementations (issue 18; BENCHMARKS.md,
"Published files checked against their reference implementations").

For each reference repository (a checkout you fetched: rosinality/stylegan2-pytorch, NVlabs/stylegan2-ada-pytorch,
NVlabs/stylegan3, genforce/interfacegan) this copies it to a temporary folder, builds its generator with random
weights (every parameter perturbed, noise strengths and biases included), saves it exactly as the published files
are saved, loads the file with ``lapdata.synthetic.stylegan_files.read_generator`` and prints: strict key/shape
match, max |difference| of the mapping, the truncation and the images for the same latents and the stored noise,
CPU-seconds of one forward each. InterfaceGAN's own edit flow (``StyleGANGenerator`` + ``linear_interpolate`` +
``easy_synthesize``, Z and W boundaries) is compared with ``StyleGANBackend.render_views`` as uint8 images.

Nothing of the references is imported by the project; this script runs them from the temporary copy, patched
there only where they cannot run on a CPU-only machine (rosinality's ``op/`` compiles CUDA at import; its own
CPU fallbacks are then used) or lack a package (sklearn, pkg_resources: unused by the generators).

    python benchmarks/ref_stylegan.py --rosinality R --nvlabs N --stylegan3 S --interfacegan I [--full]

``--full`` adds the published sizes (rosinality config-f 256/1024, NVlabs paper256/FFHQ 1024, InterfaceGAN FFHQ
1024): a few CPU-minutes.
"""

from __future__ import annotations

import argparse
import copy
import pickle
import shutil
import subprocess
import sys
import tempfile
import time
import types
from pathlib import Path

import numpy as np
import torch

ROOT = Path(__file__).resolve().parents[1]


def randomize(module: torch.nn.Module, seed: int = 0) -> None:
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for n, p in module.named_parameters():
            if not n.endswith("lod"):
                p.add_(torch.randn(p.shape, generator=g) * (0.2 if p.dim() <= 1 else 1.0))


def same_layout(a: dict, b: dict) -> bool:
    return {k: tuple(v.shape) for k, v in a.items()} == {k: tuple(v.shape) for k, v in b.items()}


def diff(a: torch.Tensor, b: torch.Tensor) -> float:
    return float((a.float() - b.float()).abs().max())


def timed(fn):
    t = time.process_time()
    out = fn()
    return out, round(time.process_time() - t, 2)


def row(name: str, **kv) -> None:
    print(f"{name} | " + " | ".join(f"{k}={v:.3g}" if isinstance(v, float) else f"{k}={v}" for k, v in kv.items()),
          flush=True)


def run_rosinality(work: Path, full: bool) -> None:
    from model import Generator

    from lapdata.synthetic.stylegan_files import read_generator

    configs = [dict(size=32, style_dim=64, n_mlp=3, channel_multiplier=1),
               dict(size=64, style_dim=512, n_mlp=8, channel_multiplier=2)]
    configs += [dict(size=256, style_dim=512, n_mlp=8, channel_multiplier=2),
                dict(size=1024, style_dim=512, n_mlp=8, channel_multiplier=2)] if full else []
    for cfg in configs:
        torch.manual_seed(0)
        g = Generator(**cfg).eval()
        randomize(g)
        with torch.no_grad():
            avg = g.mean_latent(1000)[0]
        path = work / f"rosinality_{cfg['size']}.pt"
        torch.save({"g_ema": g.state_dict(), "latent_avg": avg, "g": g.state_dict(), "d": {}}, path)  # convert_weight.py
        ours = read_generator(str(path))
        z, ws = torch.randn(1, cfg["style_dim"]), torch.randn(1, g.n_latent, cfg["style_dim"])
        with torch.no_grad():
            (ref, _), t_ref = timed(lambda: g([ws], input_is_latent=True, randomize_noise=False))
            mine, t_ours = timed(lambda: ours.ws_to_image(ws))
            row("rosinality", config=cfg, keys=len(g.state_dict()), strict=same_layout(ours.state_dict(), g.state_dict()),
                latent_avg=diff(ours.tracked_w_avg(), avg), mapping=diff(g.style(z), ours.z_to_w(z)),
                image=diff(ref, mine), image_absmax=float(ref.abs().max()), cpu_s_ref=t_ref, cpu_s_ours=t_ours)


def _nvlabs_pickle(path: Path, G, D=None) -> None:
    snap = {"training_set_kwargs": {"resolution": G.img_resolution}}
    for n, m in [("G", G), ("D", D), ("G_ema", G), ("augment_pipe", None)]:
        snap[n] = copy.deepcopy(m).eval().requires_grad_(False).cpu() if m is not None else None
    with open(path, "wb") as f:
        pickle.dump(snap, f)  # as training/training_loop.py writes network-snapshot-*.pkl


def _nvlabs_compare(name: str, G, path: Path) -> None:
    from lapdata.synthetic.stylegan import truncate
    from lapdata.synthetic.stylegan_files import read_generator

    ours = read_generator(str(path))
    z, ws = torch.randn(1, G.z_dim), torch.randn(1, G.num_ws, G.w_dim)
    with torch.no_grad():
        ref, t_ref = timed(lambda: G.synthesis(ws, noise_mode="const", force_fp32=True))
        mine, t_ours = timed(lambda: ours.ws_to_image(ws))
        trunc = truncate(ours.z_to_w(z), ours.tracked_w_avg(), 0.7, 8, ours.num_ws)
        row(name, resolution=G.img_resolution, num_ws=G.num_ws, keys=len(G.state_dict()),
            strict=same_layout(ours.state_dict(), G.state_dict()), mapping=diff(G.mapping(z, None)[:, 0], ours.z_to_w(z)),
            truncation=diff(G.mapping(z, None, truncation_psi=0.7, truncation_cutoff=8), trunc),
            image=diff(ref, mine), image_absmax=float(ref.abs().max()), cpu_s_ref=t_ref, cpu_s_ours=t_ours)


def run_nvlabs(work: Path, full: bool) -> None:
    import dnnlib
    from training.networks import Discriminator, Generator

    configs = [("small-32", 32, dict(channel_base=2048, channel_max=256, num_fp16_res=4, conv_clamp=256), 2),
               ("small-64-orig", 64, dict(channel_base=2048, channel_max=128, architecture="orig"), 3)]
    configs += [("paper256", 256, dict(channel_base=16384, channel_max=512, num_fp16_res=4, conv_clamp=256), 8),
                ("ffhq1024", 1024, dict(channel_base=32768, channel_max=512, num_fp16_res=4, conv_clamp=256), 8)] \
        if full else []
    for name, res, sk, n_map in configs:
        torch.manual_seed(0)
        G = Generator(z_dim=512, c_dim=0, w_dim=512, img_resolution=res, img_channels=3,
                      mapping_kwargs=dnnlib.EasyDict(num_layers=n_map), synthesis_kwargs=dnnlib.EasyDict(**sk)).eval()
        randomize(G)
        with torch.no_grad():
            G.mapping.w_avg.copy_(torch.randn(512) * 0.3)
        D = Discriminator(c_dim=0, img_resolution=res, img_channels=3, channel_base=sk["channel_base"],
                          channel_max=sk["channel_max"])
        _nvlabs_pickle(work / f"nvlabs_{name}.pkl", G, D)
        _nvlabs_compare(f"nvlabs {name}", G, work / f"nvlabs_{name}.pkl")


def run_stylegan3(work: Path, full: bool) -> None:
    import dnnlib
    from training import networks_stylegan2, networks_stylegan3

    from lapdata.core.errors import LapError
    from lapdata.synthetic.stylegan_files import read_generator

    torch.manual_seed(0)  # its StyleGAN2 config: synthesis kwargs at the Generator's top level
    G = networks_stylegan2.Generator(z_dim=512, c_dim=0, w_dim=512, img_resolution=64, img_channels=3,
                                     mapping_kwargs=dnnlib.EasyDict(num_layers=2), channel_base=8192,
                                     channel_max=256, num_fp16_res=4, conv_clamp=256).eval()
    randomize(G)
    with torch.no_grad():
        G.synthesis.b16.torgb.bias.fill_(300.0)  # outputs past conv_clamp 256
    _nvlabs_pickle(work / "sg3repo_stylegan2.pkl", G)
    _nvlabs_compare("stylegan3-repo stylegan2 (clamped)", G, work / "sg3repo_stylegan2.pkl")
    G3 = networks_stylegan3.Generator(z_dim=64, c_dim=0, w_dim=64, img_resolution=32, img_channels=3,
                                      mapping_kwargs=dnnlib.EasyDict(num_layers=2), channel_base=1024, channel_max=64)
    _nvlabs_pickle(work / "stylegan3_t.pkl", G3)
    try:
        read_generator(str(work / "stylegan3_t.pkl"))
        row("stylegan3 T", result="loaded")
    except LapError as e:
        row("stylegan3 T", result=f"LapError: {e}")


def run_interfacegan(work: Path, full: bool) -> None:
    from models import model_settings
    from models.stylegan_generator import StyleGANGenerator
    from models.stylegan_generator_model import StyleGANGeneratorModel
    from utils.manipulator import linear_interpolate

    from lapdata.synthetic.base import IdentityParams, Pose
    from lapdata.synthetic.stylegan import StyleGANBackend, StyleGANConfig, truncate
    from lapdata.synthetic.stylegan_files import read_generator

    model_settings.USE_CUDA = False
    for res, fused in [(32, True), (128, "auto")] + ([(1024, "auto")] if full else []):
        torch.manual_seed(0)
        m = StyleGANGeneratorModel(resolution=res, w_space_dim=512, fused_scale=fused).eval()
        randomize(m)
        with torch.no_grad():
            m.truncation.w_avg.copy_(torch.randn(512) * 0.3)
        sd = m.state_dict()
        del sd["truncation.truncation"]  # as convert_tf_model saves stylegan_ffhq.pth
        path = work / f"stylegan_ffhq{res}.pth"
        torch.save(sd, path)
        ours = read_generator(str(path))
        z, wp = torch.randn(1, 512), torch.randn(1, ours.num_ws, 512)
        with torch.no_grad():
            ref, t_ref = timed(lambda: m.synthesis(wp))
            mine, t_ours = timed(lambda: ours.ws_to_image(wp))
            w = ours.z_to_w(z)
            row("interfacegan", resolution=res, fused_scale=fused, keys=len(sd), strict=same_layout(ours.state_dict(), sd),
                mapping=diff(m.mapping(z), w), truncation=diff(m.truncation(m.mapping(z)),
                                                                truncate(w, ours.tracked_w_avg(), 0.7, 8, ours.num_ws)),
                image=diff(ref, mine), image_absmax=float(ref.abs().max()), cpu_s_ref=t_ref, cpu_s_ours=t_ours)
        if res != 128:
            continue
        model_settings.MODEL_POOL["stylegan_check"] = dict(model_settings.MODEL_POOL["stylegan_ffhq"], resolution=res,
                                                           model_path=str(path), fused_scale=fused)
        G = StyleGANGenerator("stylegan_check")
        bnd = np.random.default_rng(1).standard_normal((1, 512))
        bnd /= np.linalg.norm(bnd)
        poses = [Pose(float(d / 0.05)) for d in np.linspace(-3, 3, 5)]
        for space in ("z", "w"):
            np.random.seed(3)
            zc = G.easy_sample(1)
            code = zc if space == "z" else G.synthesize(zc)["w"]
            ref_u8 = np.concatenate([G.easy_synthesize(b, latent_space_type=space)["image"]
                                     for b in G.get_batch_inputs(linear_interpolate(code, bnd, -3.0, 3.0, 5))])
            bpath = work / f"stylegan_ffhq_pose{'_w' if space == 'w' else ''}_boundary.npy"
            np.save(bpath, bnd)
            be = StyleGANBackend(StyleGANConfig(generator=str(path), boundary=str(bpath), yaw_scale=0.05))
            views = be.render_views(IdentityParams(0, {"z": zc[0].tolist()}), poses, res, np.random.default_rng(0))
            d = np.abs(ref_u8.astype(int) - np.stack([v.image for v in views]).astype(int))
            row("interfacegan edit.py flow", space=space, boundary=bpath.name, views=5, psi=0.7, truncation_layers=8,
                uint8_maxdiff=int(d.max()), uint8_meandiff=float(d.mean()))


RUNS = {"rosinality": run_rosinality, "nvlabs": run_nvlabs, "stylegan3": run_stylegan3,
        "interfacegan": run_interfacegan}


def _prepare(name: str, src: Path, tmp: Path) -> Path:
    """A temporary copy of the reference, patched there for a CPU-only machine."""
    dst = tmp / name
    shutil.copytree(src, dst)
    if name == "rosinality":  # op/ compiles CUDA kernels at import; on CPU its native fallbacks run
        for f in ("op/fused_act.py", "op/upfirdn2d.py"):
            p = dst / f
            p.write_bytes(p.read_bytes().replace(b"from torch.utils.cpp_extension import load",
                                                 b"load = lambda *a, **k: None"))
    return dst


def _stubs() -> None:
    """Packages the reference modules import but their generators never use."""
    sk = types.ModuleType("sklearn")
    sk.svm = None
    pr = types.ModuleType("pkg_resources")
    pr.parse_version = lambda v: tuple(int(x) for x in v.split("+")[0].split(".")[:2])
    for name, mod in (("sklearn", sk), ("pkg_resources", pr)):
        sys.modules.setdefault(name, mod)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    for n in RUNS:
        ap.add_argument(f"--{n}", type=Path, help=f"{n} reference checkout")
    ap.add_argument("--full", action="store_true", help="also the published sizes (256, 1024 px)")
    ap.add_argument("--only", choices=list(RUNS), help=argparse.SUPPRESS)
    ap.add_argument("--work", type=Path, help=argparse.SUPPRESS)
    a = ap.parse_args()
    torch.set_num_threads(1)
    if a.only:  # the child: run one reference from its temporary copy (the current folder)
        sys.path[:0] = [str(Path.cwd()), str(ROOT)]
        _stubs()
        RUNS[a.only](a.work, a.full)
        return
    with tempfile.TemporaryDirectory(prefix="ref-stylegan-") as tmp:
        for n in RUNS:
            src = getattr(a, n)
            if src is None:
                continue
            ref = _prepare(n, src, Path(tmp))
            (Path(tmp) / f"work-{n}").mkdir()
            cmd = [sys.executable, str(Path(__file__).resolve()), "--only", n, "--work", str(Path(tmp) / f"work-{n}")]
            subprocess.run(cmd + (["--full"] if a.full else []), cwd=ref, check=True)


if __name__ == "__main__":
    main()
