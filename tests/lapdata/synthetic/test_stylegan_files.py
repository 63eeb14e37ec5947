"""Native StyleGAN loading (lapdata.synthetic.stylegan_files, stylegan2_nets, stylegan1, pickle_safe) on the
published layouts built here from tables of key names and shapes (facts of rosinality's ``Generator``, NVlabs'
stylegan2-ada-pytorch ``Generator`` and InterfaceGAN's ``StyleGANGeneratorModel``), at tiny sizes, saved as the
files users have: rosinality ``{"g_ema", "latent_avg", "g", "d"}`` (torch.save), an NVlabs network pickle
(``torch_utils.persistence`` objects, plain pickle), InterfaceGAN's ``.pth``. The comparison of the outputs with
the reference implementations themselves is in BENCHMARKS.md ("Published files checked against their reference
implementations")."""

from __future__ import annotations

import argparse
import collections
import json
import math
import pickle
import sys
import types
from pathlib import Path

import numpy as np
import pytest
import torch

from lapdata.core.errors import LapError
from lapdata.synthetic.base import IdentityParams, Pose
from lapdata.synthetic.stylegan import StyleGANBackend, StyleGANConfig
from lapdata.synthetic.stylegan_files import read_generator

D = 16  # style / w size of the tiny generators


def fir(scale: float = 1.0) -> torch.Tensor:
    f = torch.tensor([1.0, 3, 3, 1])
    return torch.outer(f, f) / 64 * scale


def chans(res: int) -> int:
    return {4: 16, 8: 16, 16: 8, 32: 8, 64: 4}[res]


# ------------------------------------------------------------------------------------------------ layout tables


def rosinality_table(res: int, n_mlp: int = 2) -> dict[str, tuple]:
    """rosinality/stylegan2-pytorch Generator.state_dict(): key -> shape (kernels: the stored [1,3,3,1] x4)."""
    t: dict[str, tuple] = {}
    for k in range(1, n_mlp + 1):
        t |= {f"style.{k}.weight": (D, D), f"style.{k}.bias": (D,)}

    def styled(p, i, o, up):
        t.update({p + "conv.weight": (1, o, i, 3, 3), p + "conv.modulation.weight": (i, D),
                  p + "conv.modulation.bias": (i,), p + "noise.weight": (1,), p + "activate.bias": (o,)})
        if up:
            t[p + "conv.blur.kernel"] = "kernel4"

    def to_rgb(p, i, up):
        t.update({p + "conv.weight": (1, 3, i, 1, 1), p + "conv.modulation.weight": (i, D),
                  p + "conv.modulation.bias": (i,), p + "bias": (1, 3, 1, 1)})
        if up:
            t[p + "upsample.kernel"] = "kernel4"

    c4 = chans(4)
    t["input.input"] = (1, c4, 4, 4)
    styled("conv1.", c4, c4, False)
    to_rgb("to_rgb1.", c4, False)
    cin, n_up = c4, int(math.log2(res)) - 2
    for j in range(n_up):
        c = chans(2 ** (j + 3))
        styled(f"convs.{2 * j}.", cin, c, True)
        styled(f"convs.{2 * j + 1}.", c, c, False)
        to_rgb(f"to_rgbs.{j}.", c, True)
        cin = c
    for i in range(2 * n_up + 1):
        r = 2 ** ((i + 5) // 2)
        t[f"noises.noise_{i}"] = (1, 1, r, r)
    return t


def nvlabs_table(res: int, n_map: int = 2) -> dict[str, tuple]:
    """NVlabs stylegan2-ada-pytorch Generator.state_dict() (architecture 'skip'): key -> shape."""
    t: dict[str, tuple] = {"mapping.w_avg": (D,)}
    for k in range(n_map):
        t |= {f"mapping.fc{k}.weight": (D, D), f"mapping.fc{k}.bias": (D,)}

    def layer(p, i, o, r):
        t.update({p + "resample_filter": "filter", p + "affine.weight": (i, D), p + "affine.bias": (i,),
                  p + "weight": (o, i, 3, 3), p + "noise_const": (r, r), p + "noise_strength": (), p + "bias": (o,)})

    cin = 0
    for r in [2 ** k for k in range(2, int(math.log2(res)) + 1)]:
        p, c = f"synthesis.b{r}.", chans(r)
        t[p + "resample_filter"] = "filter"
        if r == 4:
            t[p + "const"] = (c, 4, 4)
        else:
            layer(p + "conv0.", cin, c, r)
        layer(p + "conv1.", c, c, r)
        t.update({p + "torgb.affine.weight": (c, D), p + "torgb.affine.bias": (c,), p + "torgb.weight": (3, c, 1, 1),
                  p + "torgb.bias": (3,)})
        cin = c
    return t


def interfacegan_table(res: int, fused_from: int = 32) -> dict[str, tuple]:
    """InterfaceGAN StyleGANGeneratorModel.state_dict() minus truncation.truncation (as its .pth are saved);
    upsampling layers from ``fused_from`` px on hold the fused kernel ``weight`` (3, 3, I, O)."""
    t: dict[str, tuple] = {"truncation.w_avg": (D,), "synthesis.lod": ()}
    for k in range(8):
        t |= {f"mapping.dense{k}.linear.weight": (D, D), f"mapping.dense{k}.wscale.bias": (D,)}
    blocks = int(math.log2(res)) - 1
    for i in range(2 * blocks):
        r, p = 2 ** (i // 2 + 2), f"synthesis.layer{i}."
        c, cin = chans(r), chans(max(4, r // 2))
        t |= {p + "epilogue.apply_noise.noise": (1, 1, r, r), p + "epilogue.apply_noise.weight": (c,),
              p + "epilogue.bias": (c,), p + "epilogue.style_mod.dense.linear.weight": (2 * c, D),
              p + "epilogue.style_mod.dense.wscale.bias": (2 * c,)}
        if i == 0:
            t[p + "first_layer"] = (1, c, 4, 4)
        elif i % 2 == 0:
            t[p + ("weight" if r >= fused_from else "conv.weight")] = (3, 3, cin, c) if r >= fused_from else (c, cin, 3, 3)
            t[p + "blur.kernel"] = "blur"
        else:
            t[p + "conv.weight"] = (c, c, 3, 3)
    for j in range(blocks):
        t |= {f"synthesis.output{j}.conv.weight": (3, chans(2 ** (j + 2)), 1, 1), f"synthesis.output{j}.bias": (3,)}
    return t


def fill(table: dict[str, tuple], seed: int = 0) -> dict[str, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    out = {}
    for k, s in table.items():
        if s == "kernel4":
            out[k] = fir(4.0)
        elif s == "filter":
            out[k] = fir()
        elif s == "blur":
            c = table[k.replace("blur.kernel", "epilogue.bias")][0]
            out[k] = (torch.tensor([[1.0, 2, 1], [2, 4, 2], [1, 2, 1]]) / 16).expand(c, 1, 3, 3).clone()
        elif k == "synthesis.lod":
            out[k] = torch.zeros(())
        else:
            out[k] = torch.randn(s, generator=g) * (0.3 if len(s) <= 1 else 1.0)
            if len(s) == 2 and k.startswith(("style.", "mapping.")):
                out[k] *= 100.0  # mapping weights are stored divided by their lr multiplier 0.01
    return out


# ------------------------------------------------------------------------------------------------ files


class EasyDict(dict):  # stands for dnnlib.util.EasyDict when pickled
    pass


def _reconstruct_persistent_obj(meta):  # stands for torch_utils.persistence's; never called by the loader
    raise AssertionError("the loader ran the file's reconstructor")


class _Persistent:
    def __init__(self, class_name, state):
        self.meta = dict(type="class", version=6, module_src="open('PWNED', 'w').write('ran')\n",
                         class_name=class_name, state=state)

    def __reduce__(self):
        return _reconstruct_persistent_obj, (self.meta,)


def _module_tree(sd: dict[str, torch.Tensor], names: dict[str, str], buffers: set[str]) -> _Persistent:
    """The persistent-object tree of an NVlabs module from its flat state dict (every submodule persistent)."""
    def node(prefix: str) -> _Persistent:
        st = {"training": False, "_parameters": collections.OrderedDict(), "_buffers": collections.OrderedDict(),
              "_non_persistent_buffers_set": set(), "_modules": collections.OrderedDict()}
        children = []
        for k, v in sd.items():
            if not k.startswith(prefix):
                continue
            rest = k[len(prefix):]
            if "." in rest:
                children.append(rest.split(".")[0])
            else:
                st["_buffers" if rest in buffers else "_parameters"][rest] = v if rest in buffers else \
                    torch.nn.Parameter(v, requires_grad=False)
        for ch in dict.fromkeys(children):
            st["_modules"][ch] = node(f"{prefix}{ch}.")
        return _Persistent(names.get(prefix, "Layer"), st)
    return node("")


@pytest.fixture
def nvlabs_modules(monkeypatch):
    """Register the stand-ins under NVlabs' module names so pickle records those globals."""
    for mod, obj, name in [("torch_utils.persistence", _reconstruct_persistent_obj, "_reconstruct_persistent_obj"),
                           ("dnnlib.util", EasyDict, "EasyDict")]:
        m = types.ModuleType(mod)
        setattr(m, name, obj)
        monkeypatch.setattr(obj, "__module__", mod)
        monkeypatch.setitem(sys.modules, mod.split(".")[0], types.ModuleType(mod.split(".")[0]))
        monkeypatch.setitem(sys.modules, mod, m)


def save_nvlabs(path: Path, sd: dict[str, torch.Tensor], res: int, extra_state: dict | None = None,
                c_dim: int = 0) -> Path:
    buffers = {"w_avg", "resample_filter", "noise_const"}
    g = _module_tree(sd, {"": "Generator", "mapping.": "MappingNetwork", "synthesis.": "SynthesisNetwork"}, buffers)
    kw = EasyDict(z_dim=D, c_dim=c_dim, w_dim=D, img_resolution=res, img_channels=3,
                  mapping_kwargs=EasyDict(num_layers=2), synthesis_kwargs=EasyDict(channel_base=64, conv_clamp=256))
    g.meta["state"] |= {"_init_args": (), "_init_kwargs": kw, "z_dim": D, "img_resolution": res, **(extra_state or {})}
    snapshot = {"G": g, "D": _Persistent("Discriminator", {}), "G_ema": g, "augment_pipe": None,
                "training_set_kwargs": {"resolution": res}}
    path.write_bytes(pickle.dumps(snapshot))
    return path


def save_rosinality(path: Path, sd: dict[str, torch.Tensor], latent_avg: torch.Tensor | None) -> Path:
    ckpt = {"g_ema": sd, "g": sd, "d": {}}
    if latent_avg is not None:
        ckpt["latent_avg"] = latent_avg
    else:  # a training checkpoint: optimiser states and its argparse.Namespace, no latent_avg
        ckpt |= {"g_optim": {"state": {}, "param_groups": []}, "args": argparse.Namespace(size=32), "ada_aug_p": 0.0}
    torch.save(ckpt, path)
    return path


@pytest.fixture
def published(tmp_path, nvlabs_modules) -> dict[str, Path]:
    """One tiny generator per published format (64 px: 10 w+ layers) and InterfaceGAN-named boundaries."""
    ros, nv, ig = fill(rosinality_table(64)), fill(nvlabs_table(64)), fill(interfacegan_table(64))
    files = {"rosinality": save_rosinality(tmp_path / "ros.pt", ros, torch.randn(D) * 0.1),
             "rosinality-train": save_rosinality(tmp_path / "ros_train.pt", ros, None),
             "nvlabs": save_nvlabs(tmp_path / "nv.pkl", nv, 64),
             "interfacegan": tmp_path / "stylegan_ffhq.pth", "interfacegan-legacy": tmp_path / "legacy.pth"}
    torch.save(ig, files["interfacegan"])
    torch.save(ig, files["interfacegan-legacy"], _use_new_zipfile_serialization=False)  # torch < 1.6 files
    rng = np.random.default_rng(0)
    for name in ("stylegan_ffhq_pose_boundary.npy", "stylegan_ffhq_pose_w_boundary.npy", "pose.npy"):
        np.save(tmp_path / name, rng.standard_normal((1, D)))
    return files


# ------------------------------------------------------------------------------------------------ tests


@pytest.mark.parametrize("fmt, kind, keys", [("rosinality", "rosinality-stylegan2", rosinality_table(64)),
                                             ("rosinality-train", "rosinality-stylegan2", rosinality_table(64)),
                                             ("nvlabs", "nvlabs-stylegan2", nvlabs_table(64)),
                                             ("interfacegan", "interfacegan-stylegan1", interfacegan_table(64)),
                                             ("interfacegan-legacy", "interfacegan-stylegan1", interfacegan_table(64))])
def test_published_layouts_load_strictly(published, fmt, kind, keys):
    net = read_generator(str(published[fmt]))
    assert net.kind == kind
    sd = net.state_dict()
    assert set(sd) == set(keys)  # strict: every key of the published layout, nothing else
    assert {k: tuple(v.shape) for k, v in sd.items() if isinstance(keys[k], tuple)} == \
        {k: s for k, s in keys.items() if isinstance(s, tuple)}
    assert (net.z_dim, net.w_dim, net.num_ws, net.resolution) == (D, D, 10, 64)
    with torch.no_grad():
        img = net.ws_to_image(net.z_to_w(torch.randn(2, D))[:, None].repeat(1, net.num_ws, 1))
    assert img.shape == (2, 3, 64, 64) and torch.isfinite(img).all() and img.std() > 0
    if fmt == "rosinality":
        assert torch.equal(net.tracked_w_avg(), torch.load(published[fmt], weights_only=True)["latent_avg"])
    elif fmt == "rosinality-train":
        assert net.tracked_w_avg() is None


def test_rosinality_and_nvlabs_layouts_compute_the_same_generator(published):
    """The two StyleGAN2 layouts hold one architecture: NVlabs' tensors renamed to rosinality's names (weights
    (O, I, k, k) -> (1, O, I, k, k), noise (r, r) -> (1, 1, r, r), ToRGB bias (3,) -> (1, 3, 1, 1)) give the same
    images through the two independent module definitions."""
    nv = read_generator(str(published["nvlabs"]))
    s = nv.state_dict()
    ros = {f"style.{k + 1}.{n}": s[f"mapping.fc{k}.{n}"] for k in range(2) for n in ("weight", "bias")}

    def conv(dst, src, up):
        ros.update({dst + "conv.weight": s[src + "weight"][None], dst + "conv.modulation.weight": s[src + "affine.weight"],
                    dst + "conv.modulation.bias": s[src + "affine.bias"], dst + "activate.bias": s[src + "bias"],
                    dst + "noise.weight": s[src + "noise_strength"].reshape(1)})
        if up:
            ros[dst + "conv.blur.kernel"] = fir(4.0)

    def rgb(dst, src, up):
        ros.update({dst + "conv.weight": s[src + "weight"][None], dst + "conv.modulation.weight": s[src + "affine.weight"],
                    dst + "conv.modulation.bias": s[src + "affine.bias"], dst + "bias": s[src + "bias"].reshape(1, 3, 1, 1)})
        if up:
            ros[dst + "upsample.kernel"] = fir(4.0)

    ros["input.input"] = s["synthesis.b4.const"][None]
    conv("conv1.", "synthesis.b4.conv1.", False)
    rgb("to_rgb1.", "synthesis.b4.torgb.", False)
    noises = [s["synthesis.b4.conv1.noise_const"]]
    for j, r in enumerate((8, 16, 32, 64)):
        conv(f"convs.{2 * j}.", f"synthesis.b{r}.conv0.", True)
        conv(f"convs.{2 * j + 1}.", f"synthesis.b{r}.conv1.", False)
        rgb(f"to_rgbs.{j}.", f"synthesis.b{r}.torgb.", True)
        noises += [s[f"synthesis.b{r}.conv0.noise_const"], s[f"synthesis.b{r}.conv1.noise_const"]]
    ros |= {f"noises.noise_{i}": n[None, None] for i, n in enumerate(noises)}
    path = published["rosinality"].with_name("from_nvlabs.pt")
    torch.save({"g_ema": ros}, path)
    rn = read_generator(str(path))
    z, ws = torch.randn(2, D), torch.randn(2, 10, D)
    with torch.no_grad():
        torch.testing.assert_close(rn.z_to_w(z), nv.z_to_w(z), rtol=1e-5, atol=1e-5)
        a, b = rn.ws_to_image(ws), nv.ws_to_image(ws)  # no output here reaches NVlabs' conv_clamp 256
    assert a.abs().max() > 0.5
    torch.testing.assert_close(a, b, rtol=1e-4, atol=1e-4)


@pytest.mark.parametrize("fmt", ["rosinality", "nvlabs", "interfacegan"])
@pytest.mark.parametrize("space", ["z", "w"])
def test_truncation_after_the_edit_with_the_models_w_avg(published, fmt, space):
    """psi 0: the first 8 of 10 layers are the model's w_avg for every view (so the edit was made before);
    psi 0.5: w_avg + 0.5 (edited w - w_avg) there, the edited w untouched after layer 8."""
    tail = "_w_boundary" if space == "w" else "_boundary"
    bnd = str(published[fmt].with_name(f"stylegan_ffhq_pose{tail}.npy"))
    poses = [Pose(-30), Pose(0), Pose(30)]
    params = IdentityParams(0, {"z": np.random.default_rng(1).standard_normal(D).tolist()})
    full = StyleGANBackend(StyleGANConfig(generator=str(published[fmt]), boundary=bnd, truncation=1.0))
    assert full.space == space
    edited = full.latents(params, poses)  # (3, 10, D), not truncated
    w_avg = full._load().tracked_w_avg()
    assert w_avg is not None and not torch.allclose(edited[0, 0], edited[2, 0])
    for psi in (0.0, 0.5):
        t = StyleGANBackend(StyleGANConfig(generator=str(published[fmt]), boundary=bnd, truncation=psi)).latents(
            params, poses)
        torch.testing.assert_close(t[:, :8], w_avg + psi * (edited[:, :8] - w_avg))
        torch.testing.assert_close(t[:, 8:], edited[:, 8:])
    if space == "w":  # the view's w has exactly the requested distance along the boundary
        n = torch.as_tensor(full.boundary, dtype=torch.float32)
        torch.testing.assert_close(edited[:, 0] @ n, torch.tensor([-1.5, 0.0, 1.5]), atol=1e-5, rtol=0)


def test_training_checkpoint_truncates_towards_the_mean_of_mapped_samples(published):
    b = StyleGANBackend(StyleGANConfig(generator=str(published["rosinality-train"]), truncation=0.0,
                                       boundary=str(published["nvlabs"].with_name("stylegan_ffhq_pose_boundary.npy"))))
    net = b._load()
    z = torch.randn(4096, D, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        torch.testing.assert_close(b.latents(IdentityParams(0, {"z": [0.5] * D}), [Pose(0)])[0, 0],
                                   net.z_to_w(z).mean(0))
    assert b.describe()["w_avg"] == "mean of 4096 mapped samples"


@pytest.mark.parametrize("name, declared, msg", [
    ("stylegan_ffhq_pose_boundary.npy", "w", "named as a Z-space boundary .* but declared W"),
    ("stylegan_ffhq_pose_w_boundary.npy", "z", "named as a W-space boundary .* but declared Z"),
    ("pose.npy", "auto", "latent space is not in its name .* declare --boundary-space"),
    ("pose.npy", "wp", r"W\+-space pose boundary has 16 values but the generator's W\+ latent has 16 or 160"),
])
def test_boundary_space_is_checked(published, name, declared, msg):
    bnd = published["nvlabs"].with_name(name)
    if declared == "wp":
        np.save(bnd, np.ones(3 * D))
        msg = msg.replace("has 16 values", "has 48 values")
    with pytest.raises(LapError, match=msg) as ei:
        StyleGANBackend(StyleGANConfig(generator=str(published["nvlabs"]), boundary=str(bnd), boundary_space=declared))
    assert "\n" not in str(ei.value)


def test_wplus_boundary_per_layer(published):
    """A W+ boundary of num_ws x D values is added to every layer as InterfaceGAN's linear_interpolate does."""
    bnd = published["nvlabs"].with_name("pose_wp_boundary.npy")
    np.save(bnd, np.random.default_rng(2).standard_normal((1, 10 * D)))
    b = StyleGANBackend(StyleGANConfig(generator=str(published["nvlabs"]), boundary=str(bnd), truncation=1.0))
    assert b.space == "wp" and b.boundary.shape == (10, D)
    lat = b.latents(IdentityParams(0, {"z": [1.0] * D}), [Pose(-20), Pose(20)])
    n = torch.as_tensor(b.boundary, dtype=torch.float32)
    torch.testing.assert_close(lat[1] - lat[0], 2.0 * n)


def test_malicious_pickle_is_inert(tmp_path, nvlabs_modules, monkeypatch):
    """A __reduce__ naming os.system is recorded, never run, wherever it sits; the module source NVlabs pickles
    carry is never executed either (it would write PWNED)."""
    import os

    monkeypatch.chdir(tmp_path)
    marker = tmp_path / "marker"

    class Evil:
        def __reduce__(self):
            return os.system, (f"touch {marker}",)

    path = tmp_path / "evil.pkl"
    path.write_bytes(pickle.dumps({"G_ema": Evil()}))
    with pytest.raises(LapError, match="G_ema is a (posix|nt).system, not an NVlabs persistent network"):
        read_generator(str(path))
    # inside a valid network: loads, nothing runs
    save_nvlabs(tmp_path / "nv.pkl", fill(nvlabs_table(16)), 16, extra_state={"hook": Evil()})
    assert read_generator(str(tmp_path / "nv.pkl")).resolution == 16
    assert not marker.exists() and not (tmp_path / "PWNED").exists()


@pytest.mark.parametrize("content, msg", [
    ({"weights": torch.zeros(2)}, "not a StyleGAN generator: found keys weights"),
    ({"g_ema": {"style.1.weight": torch.zeros(D, D), "input.input": torch.zeros(1, 8, 4, 4)}},
     "rosinality-stylegan2 weights lack 'style.1.bias'|weights do not match"),
    (b"junk", "not a StyleGAN generator \\(neither"),
])
def test_unrecognised_files_are_one_line_errors(tmp_path, content, msg):
    path = tmp_path / "G.pt"
    if isinstance(content, bytes):
        path.write_bytes(content)
    else:
        torch.save(content, path)
    with pytest.raises(LapError, match=msg) as ei:
        read_generator(str(path))
    assert str(path) in str(ei.value) and "\n" not in str(ei.value)


class _FFHQDetector:
    """Stand-in face detector: a face at FFHQ's framing in every view (the tiny random generators paint no face)."""

    def __call__(self, img):
        from lapdata.faces.align import Face, lap_template
        from lapdata.synthetic.framing import SOURCE_FRAMINGS

        f = SOURCE_FRAMINGS["ffhq"]
        pts = lap_template(img.shape[1], f.iod, f.eye_y)
        return [Face(box=np.array([0.0, 0.0, img.shape[1], img.shape[0]]), landmarks=pts, score=1.0)]


@pytest.mark.parametrize("fmt", ["rosinality", "nvlabs", "interfacegan"])
def test_build_synthetic_cli_end_to_end(published, fmt, tmp_path):
    """Through the CLI each format loads, edits and renders; the random generators paint no face, so the framing
    step (dlib) makes every view a counted no_face row. With a detector that finds the FFHQ-framed face, the same
    config writes every view and the dataset passes its audit."""
    from typer.testing import CliRunner

    from lapdata.dataset.audit.run import audit_dataset
    from lapdata.cli import app
    from lapdata.core.config import load_config
    from lapdata.synthetic.build import SynthConfig, run_synthetic

    out = tmp_path / f"out-{fmt}"
    bnd = published[fmt].with_name("stylegan_ffhq_pose_w_boundary.npy")
    args = {"backend": "stylegan", "generator": str(published[fmt]), "pose_boundary": str(bnd), "identities": 2,
            "poses": 3, "size": 32, "id_filter": "none", "device": "cpu"}
    r = CliRunner().invoke(app, ["build-synthetic", *[x for k, v in args.items()
                                                      for x in (f"--{k.replace('_', '-')}", str(v))], "--out", str(out)])
    assert r.exit_code == 0, r.output
    assert "6 views: 0 ok, 0 skipped, 6 error (no_face 6)" in r.output
    out2 = tmp_path / f"found-{fmt}"
    st = run_synthetic(load_config(SynthConfig, {**args, "out": str(out2), "progress": False}), detector=_FFHQDetector())
    assert st["status_counts"] == {"ok": 6}, st
    assert audit_dataset(out2).ok
    bc = json.loads((out2 / "stats.json").read_text())["config"]["backend_config"]
    kinds = {"rosinality": "rosinality-stylegan2", "nvlabs": "nvlabs-stylegan2", "interfacegan": "interfacegan-stylegan1"}
    assert (bc["generator_kind"], bc["boundary_space_used"], bc["latent_dim"], bc["w_shape"], bc["w_avg"]) == \
        (kinds[fmt], "w", D, [10, D], "model")


def test_stylegan3_and_conditional_pickles_are_refused_in_one_line(tmp_path, nvlabs_modules):
    sd = fill(nvlabs_table(16))
    sg3 = save_nvlabs(tmp_path / "sg3.pkl", {**sd, "synthesis.input.freqs": torch.zeros(8, 2)}, 16)
    with pytest.raises(LapError, match="a StyleGAN3 generator .*not supported yet"):
        read_generator(str(sg3))
    with pytest.raises(LapError, match=r"a conditional generator \(c_dim=10\)"):
        read_generator(str(save_nvlabs(tmp_path / "cond.pkl", sd, 16, c_dim=10)))
