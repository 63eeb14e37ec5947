"""The generator files users have, recognised from their content (no flag) and loaded into our own modules.

| file | recognised by | module |
|---|---|---|
| TorchScript (``torch.jit.save``) | a zip with ``code/`` / ``constants.pkl`` | ``ScriptNet`` (+ optional mapping) |
| rosinality/stylegan2-pytorch ``.pt`` | ``{"g_ema": state dict, "latent_avg"?, "g"?, "d"?, ...}`` | ``RosinalityG`` |
| NVlabs stylegan2-ada-pytorch ``.pkl`` (stylegan3's StyleGAN2 too) | a plain pickle with ``G_ema`` | ``NVlabsG`` |
| InterfaceGAN StyleGAN1 ``.pth`` | a state dict with ``mapping.dense0`` + ``synthesis.layer0`` | ``InterfaceGANStyleGAN1`` |

``torch.save`` files are read with ``torch.load(weights_only=True)`` (rosinality's training checkpoints also hold
their ``argparse.Namespace``, allowed as plain data); NVlabs pickles through ``pickle_safe`` (nothing from the file
runs). Every state dict is loaded strictly. Anything else is one ``LapError`` naming the file and what was found.
"""

from __future__ import annotations

import argparse
import warnings
import zipfile
from pathlib import Path
from typing import Any

import torch

from lapdata.core.errors import LapError

from lapdata.synthetic.pickle_safe import Persistent, persistent_state, plain, safe_load
from lapdata.synthetic.stylegan_ops import StyleNet

LEGACY_TORCH_MAGIC = 0x1950A86A20F9469CFC6C  # the first pickle of a non-zip torch.save file


def _first_line(e: BaseException) -> str:
    msg = str(e).strip()
    return (msg.splitlines()[0] if msg else type(e).__name__)[:160]


class ScriptNet(StyleNet):
    """A TorchScript generator ``g(w) -> image`` with an optional TorchScript mapping ``m(z) -> w`` ((N, D), or
    (N, L, D) when it broadcasts). Without a mapping the generator's input is its latent z (``has_mapping``
    False). ``num_ws`` is 0 when the generator takes one w per image. Checked by a dry run in ``probe``."""

    kind = "torchscript"

    def __init__(self, g: torch.jit.ScriptModule, m: torch.jit.ScriptModule | None, z_dim: int):
        super().__init__()
        self.g, self.m, self.z_dim, self.has_mapping = g, m, int(z_dim), m is not None

    def z_to_w(self, z: torch.Tensor) -> torch.Tensor:
        return self.m(z) if self.m is not None else z

    def ws_to_image(self, ws: torch.Tensor) -> torch.Tensor:
        return self.g(ws)

    def tracked_w_avg(self) -> torch.Tensor | None:
        w = getattr(self.m, "w_avg", None) if self.m is not None else None
        return w if isinstance(w, torch.Tensor) else None


def _load_script(path: Path, what: str, device: str) -> torch.jit.ScriptModule:
    if not path.is_file():
        raise LapError(f"{path}: {what} file does not exist")
    try:
        m = torch.jit.load(str(path), map_location=device)
    except Exception as e:  # noqa: BLE001 - torch raises many kinds
        raise LapError(f"{path}: not a TorchScript {what} ({_first_line(e)})") from None
    return m.eval()


def _torch_load(p: Path) -> Any:
    try:
        with warnings.catch_warnings(), torch.serialization.safe_globals([argparse.Namespace]):
            warnings.simplefilter("ignore")
            return torch.load(str(p), map_location="cpu", weights_only=True)
    except Exception as e:  # noqa: BLE001
        raise LapError(f"{p}: cannot be read as plain tensors with torch.load(weights_only=True) "
                       f"({_first_line(e)})") from None


def _pickle_load(p: Path) -> tuple[Any, list[str]]:
    try:
        with open(p, "rb") as f, warnings.catch_warnings():
            warnings.simplefilter("ignore")
            return safe_load(f)
    except Exception as e:  # noqa: BLE001 - a damaged file is the user's
        raise LapError(f"{p}: not a readable pickle ({type(e).__name__}: {_first_line(e)})") from None


def _strict(p: Path, net: StyleNet, sd: dict[str, torch.Tensor]) -> StyleNet:
    """``net`` with ``sd`` loaded strictly (names and shapes) -> one-line LapError on any difference."""
    mine = net.state_dict()
    missing, extra = sorted(set(mine) - set(sd)), sorted(set(sd) - set(mine))
    shapes = [k for k in mine if k in sd and tuple(mine[k].shape) != tuple(sd[k].shape)]
    if missing or extra or shapes:
        bits = [f"{n} {w}: {', '.join(ks[:3])}" + (" ..." if len(ks) > 3 else "")
                for n, w, ks in [(len(missing), "missing", missing), (len(extra), "unexpected", extra),
                                 (len(shapes), "of another shape", shapes)] if ks]
        raise LapError(f"{p}: {net.kind} weights do not match the layout ({'; '.join(bits)})")
    net.load_state_dict({k: v.float() if v.is_floating_point() else v for k, v in sd.items()}, strict=True)
    return net


def _build(p: Path, cls, *args) -> StyleNet:
    try:
        return cls(*args)
    except KeyError as e:
        raise LapError(f"{p}: {cls.kind} weights lack {e.args[0]!r}") from None


def _nvlabs(p: Path, g: Persistent) -> StyleNet:
    from lapdata.synthetic.stylegan2_nets import NVlabsG

    sd = persistent_state(g)
    st = g.state
    names = ("z_dim", "c_dim", "w_dim", "img_resolution", "img_channels", "mapping_kwargs", "synthesis_kwargs")
    kw = dict(zip(names, plain(st.get("_init_args") or ())))
    kw.update(plain(st.get("_init_kwargs") or {}))
    for k in names[:4]:
        kw.setdefault(k, st.get(k))
    if "synthesis_kwargs" not in kw:  # the stylegan3 repository passes them as the Generator's own **kwargs
        kw["synthesis_kwargs"] = {k: v for k, v in kw.items() if k not in names}
    if any(k.startswith("synthesis.input.") for k in sd):
        raise LapError(f"{p}: a StyleGAN3 generator (synthesis.input, filtered layers): not supported yet; use a "
                       "StyleGAN2 file (rosinality .pt, NVlabs stylegan2-ada .pkl) or StyleGAN1 (InterfaceGAN .pth)")
    if not isinstance(kw.get("z_dim"), int) or not isinstance(kw.get("img_resolution"), int):
        raise LapError(f"{p}: G_ema ({g.class_name}) has no z_dim/img_resolution: not an NVlabs StyleGAN2 generator")
    if kw.get("c_dim"):
        raise LapError(f"{p}: a conditional generator (c_dim={kw['c_dim']}): only unconditional ones are supported")
    if any(k.endswith(".skip.weight") for k in sd):
        raise LapError(f"{p}: a 'resnet' synthesis network: only the 'skip' and 'orig' architectures are supported")
    return _strict(p, _build(p, NVlabsG, sd, kw), sd)


def _from_object(p: Path, obj: Any, globals_seen: list[str]) -> StyleNet:
    from lapdata.synthetic.stylegan1 import InterfaceGANStyleGAN1
    from lapdata.synthetic.stylegan2_nets import RosinalityG

    if isinstance(obj, dict) and isinstance(obj.get("G_ema"), Persistent):
        return _nvlabs(p, obj["G_ema"])
    if isinstance(obj, dict) and "G_ema" in obj:
        raise LapError(f"{p}: G_ema is a {getattr(obj['G_ema'], 'global_name', type(obj['G_ema']).__name__)}, not an "
                       "NVlabs persistent network (torch_utils.persistence)")
    if isinstance(obj, dict) and isinstance(obj.get("g_ema"), dict):
        net = _strict(p, _build(p, RosinalityG, obj["g_ema"]), obj["g_ema"])
        avg = obj.get("latent_avg")
        if isinstance(avg, torch.Tensor) and avg.numel() == net.w_dim:
            net.latent_avg = avg.float().reshape(-1)
        return net
    tensors = isinstance(obj, dict) and obj and all(isinstance(v, torch.Tensor) for v in obj.values())
    if tensors and "style.1.weight" in obj and "input.input" in obj:  # rosinality's g_ema saved on its own
        return _strict(p, _build(p, RosinalityG, obj), obj)
    if tensors and "mapping.dense0.linear.weight" in obj and "synthesis.layer0.first_layer" in obj:
        return _strict(p, _build(p, InterfaceGANStyleGAN1, obj), obj)
    if any(n.startswith("dnnlib.tflib") for n in globals_seen):
        raise LapError(f"{p}: a TensorFlow StyleGAN pickle (dnnlib.tflib): not supported; use the PyTorch files "
                       "(NVlabs stylegan2-ada-pytorch .pkl, rosinality .pt, InterfaceGAN .pth)")
    found = ", ".join(map(str, list(obj)[:8])) + (" ..." if len(obj) > 8 else "") if isinstance(obj, dict) else \
        f"a {type(obj).__name__}"
    raise LapError(f"{p}: not a StyleGAN generator: found keys {found or '(none)'}")


def read_generator(path: str, device: str = "cpu", mapping: str = "", z_dim: int = 0) -> StyleNet:
    """The generator in ``path`` as a ``StyleNet`` in eval mode on ``device`` (see the module doc for the formats).

    ``mapping`` (a TorchScript mapping network) and ``z_dim`` (its input size; else its ``z_dim`` attribute) apply
    to TorchScript generators only."""
    p = Path(path).expanduser()
    if not p.is_file():
        raise LapError(f"{p}: generator file does not exist")
    with open(p, "rb") as f:
        head = f.read(4)
    obj, globals_seen = None, []
    if head.startswith(b"PK\x03\x04"):
        try:
            with zipfile.ZipFile(p) as z:
                names = z.namelist()
        except (zipfile.BadZipFile, OSError) as e:
            raise LapError(f"{p}: a damaged zip file ({_first_line(e)})") from None
        if any("/code/" in n or n.endswith("constants.pkl") for n in names):
            g = _load_script(p, "generator", device)
            m = _load_script(Path(mapping).expanduser(), "mapping network", device) if mapping else None
            return ScriptNet(g, m, z_dim or int(getattr(m, "z_dim", 0) or 0))
        obj = _torch_load(p)
    elif head[:1] == b"\x80":
        obj, globals_seen = _pickle_load(p)
        if isinstance(obj, int) and obj == LEGACY_TORCH_MAGIC:
            obj, globals_seen = _torch_load(p), []
    else:
        raise LapError(f"{p}: not a StyleGAN generator (neither a torch/TorchScript zip nor a pickle)")
    if mapping:
        raise LapError(f"{mapping}: --mapping is for TorchScript generators; {p.name} holds its own mapping network")
    return _from_object(p, obj, globals_seen).to(device).eval()
