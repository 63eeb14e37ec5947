"""BiSeNet face parser (ResNet-18 context path), as trained on CelebAMask-HQ by face-parsing.PyTorch.

The network follows zllrunning/face-parsing.PyTorch (``model.py`` / ``resnet.py``), the parser LAP used: a ResNet-18
context path with attention refinement modules at 1/16 and 1/32, a global-average context vector, and a feature
fusion module that fuses the ResNet 1/8 feature (which replaces BiSeNet's spatial path in that repository) with the
upsampled context feature; three heads (``conv_out`` on the fused feature, ``conv_out16`` / ``conv_out32`` auxiliary
heads used only in training). facexlib's ``parsing/bisenet.py`` is the same network with the same module names, so
both weight files -- face-parsing.PyTorch's ``79999_iter.pth`` and facexlib's ``parsing_bisenet.pth`` -- share one
state-dict key layout (``cp.resnet.layer1.0.conv1.weight``, ``cp.arm16.conv_atten.weight``, ``ffm.convblk.conv...``,
``conv_out.conv_out.weight``, ...). Our submodules keep those names so keys map one to one. The loader also accepts
the usual wrappers around such a state dict: a ``module.`` prefix (saved from DataParallel), a checkpoint dict with
``state_dict`` / ``params`` / ``params_ema`` / ``model`` / ``net``, and files without BatchNorm
``num_batches_tracked`` buffers (saved by torch < 0.4.1).

Pre-processing as in both projects' inference code: RGB resized to 512 x 512 (bilinear), scaled to [0, 1],
normalised with the ImageNet mean/std; the label map is the argmax of the main head at 512 px, resized back to the
input size (nearest).

Class ids: both weight files answer in face-parsing.PyTorch's training order (``labels.FACE_PARSING_CLASSES``:
10 = nose, 17 = hair, ...), not in the project's CelebAMask-HQ order (``labels.CLASSES``: 2 = nose, 13 = hair).
``BiSeNetParser`` maps the argmax through ``labels.order_lookup(label_order)`` before anything else sees it
(``label_order`` "face-parsing" by default; "celebamask-hq" for weights trained on g_mask.py's label maps, or a
file of 19 names: ``labels.read_label_order``).

No torchvision, no download: the weight file is a local path.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any, Mapping, Sequence

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor, nn

from lapdata.core.errors import LapError
from lapdata.parsing.base import ParseResult
from lapdata.parsing.labels import NUM_CLASSES, order_lookup, read_label_order

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
INPUT_SIZE = 512

# ------------------------------------------------------------------------------------------------------ network


class ConvBNReLU(nn.Module):
    """conv (no bias) -> BatchNorm -> ReLU. (B, Cin, H, W) -> (B, Cout, H/stride, W/stride)."""

    def __init__(self, in_chan: int, out_chan: int, ks: int = 3, stride: int = 1, padding: int = 1) -> None:
        super().__init__()
        self.conv = nn.Conv2d(in_chan, out_chan, kernel_size=ks, stride=stride, padding=padding, bias=False)
        self.bn = nn.BatchNorm2d(out_chan)

    def forward(self, x: Tensor) -> Tensor:
        return F.relu(self.bn(self.conv(x)))


class BasicBlock(nn.Module):
    """ResNet basic block; a 1x1 conv + BN shortcut when the shape changes. (B, Cin, H, W) -> (B, Cout, H/s, W/s)."""

    def __init__(self, in_chan: int, out_chan: int, stride: int = 1) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(in_chan, out_chan, 3, stride=stride, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(out_chan)
        self.conv2 = nn.Conv2d(out_chan, out_chan, 3, stride=1, padding=1, bias=False)
        self.bn2 = nn.BatchNorm2d(out_chan)
        self.downsample: nn.Sequential | None = None
        if in_chan != out_chan or stride != 1:
            self.downsample = nn.Sequential(
                nn.Conv2d(in_chan, out_chan, kernel_size=1, stride=stride, bias=False), nn.BatchNorm2d(out_chan)
            )

    def forward(self, x: Tensor) -> Tensor:
        r = F.relu(self.bn1(self.conv1(x)))
        r = self.bn2(self.conv2(r))
        s = x if self.downsample is None else self.downsample(x)
        return F.relu(s + r)


def _stage(in_chan: int, out_chan: int, blocks: int, stride: int) -> nn.Sequential:
    return nn.Sequential(BasicBlock(in_chan, out_chan, stride), *[BasicBlock(out_chan, out_chan) for _ in range(blocks - 1)])


class ResNet18(nn.Module):
    """ResNet-18 trunk without the classifier; returns the 1/8, 1/16 and 1/32 features."""

    def __init__(self) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(3, 64, kernel_size=7, stride=2, padding=3, bias=False)  # (B, 64, H/2, W/2)
        self.bn1 = nn.BatchNorm2d(64)
        self.maxpool = nn.MaxPool2d(kernel_size=3, stride=2, padding=1)  # (B, 64, H/4, W/4)
        self.layer1 = _stage(64, 64, 2, 1)  # (B, 64, H/4, W/4)
        self.layer2 = _stage(64, 128, 2, 2)  # (B, 128, H/8, W/8)
        self.layer3 = _stage(128, 256, 2, 2)  # (B, 256, H/16, W/16)
        self.layer4 = _stage(256, 512, 2, 2)  # (B, 512, H/32, W/32)

    def forward(self, x: Tensor) -> tuple[Tensor, Tensor, Tensor]:
        x = self.maxpool(F.relu(self.bn1(self.conv1(x))))
        feat8 = self.layer2(self.layer1(x))
        feat16 = self.layer3(feat8)
        feat32 = self.layer4(feat16)
        return feat8, feat16, feat32


class AttentionRefinementModule(nn.Module):
    """conv -> channel attention from the global average (1x1 conv, BN, sigmoid). (B, Cin, H, W) -> (B, Cout, H, W)."""

    def __init__(self, in_chan: int, out_chan: int) -> None:
        super().__init__()
        self.conv = ConvBNReLU(in_chan, out_chan, ks=3, stride=1, padding=1)
        self.conv_atten = nn.Conv2d(out_chan, out_chan, kernel_size=1, bias=False)
        self.bn_atten = nn.BatchNorm2d(out_chan)

    def forward(self, x: Tensor) -> Tensor:
        feat = self.conv(x)
        atten = torch.sigmoid(self.bn_atten(self.conv_atten(F.adaptive_avg_pool2d(feat, 1))))  # (B, Cout, 1, 1)
        return feat * atten


class ContextPath(nn.Module):
    """ResNet-18 + ARMs + global context. Returns (feat8 (B,128,H/8), feat16_up (B,128,H/8), feat32_up (B,128,H/16))."""

    def __init__(self) -> None:
        super().__init__()
        self.resnet = ResNet18()
        self.arm16 = AttentionRefinementModule(256, 128)
        self.arm32 = AttentionRefinementModule(512, 128)
        self.conv_head32 = ConvBNReLU(128, 128, ks=3, stride=1, padding=1)
        self.conv_head16 = ConvBNReLU(128, 128, ks=3, stride=1, padding=1)
        self.conv_avg = ConvBNReLU(512, 128, ks=1, stride=1, padding=0)

    def forward(self, x: Tensor) -> tuple[Tensor, Tensor, Tensor]:
        feat8, feat16, feat32 = self.resnet(x)
        avg = self.conv_avg(F.adaptive_avg_pool2d(feat32, 1))  # (B, 128, 1, 1)
        avg_up = F.interpolate(avg, feat32.shape[2:], mode="nearest")  # (B, 128, H/32, W/32)
        feat32_sum = self.arm32(feat32) + avg_up
        feat32_up = self.conv_head32(F.interpolate(feat32_sum, feat16.shape[2:], mode="nearest"))  # (B,128,H/16,W/16)
        feat16_sum = self.arm16(feat16) + feat32_up
        feat16_up = self.conv_head16(F.interpolate(feat16_sum, feat8.shape[2:], mode="nearest"))  # (B, 128, H/8, W/8)
        return feat8, feat16_up, feat32_up


class FeatureFusionModule(nn.Module):
    """concat -> 1x1 ConvBNReLU -> squeeze-excite style attention, residual. (B,Cin,H,W)x2 -> (B, Cout, H, W)."""

    def __init__(self, in_chan: int, out_chan: int) -> None:
        super().__init__()
        self.convblk = ConvBNReLU(in_chan, out_chan, ks=1, stride=1, padding=0)
        self.conv1 = nn.Conv2d(out_chan, out_chan // 4, kernel_size=1, bias=False)
        self.conv2 = nn.Conv2d(out_chan // 4, out_chan, kernel_size=1, bias=False)

    def forward(self, fsp: Tensor, fcp: Tensor) -> Tensor:
        feat = self.convblk(torch.cat([fsp, fcp], dim=1))
        atten = torch.sigmoid(self.conv2(F.relu(self.conv1(F.adaptive_avg_pool2d(feat, 1)))))  # (B, Cout, 1, 1)
        return feat * atten + feat


class BiSeNetOutput(nn.Module):
    """Segmentation head: 3x3 ConvBNReLU -> 1x1 conv to class logits. (B, Cin, h, w) -> (B, n_classes, h, w)."""

    def __init__(self, in_chan: int, mid_chan: int, n_classes: int) -> None:
        super().__init__()
        self.conv = ConvBNReLU(in_chan, mid_chan, ks=3, stride=1, padding=1)
        self.conv_out = nn.Conv2d(mid_chan, n_classes, kernel_size=1, bias=False)

    def forward(self, x: Tensor) -> Tensor:
        return self.conv_out(self.conv(x))


@dataclass
class BiSeNetLogits:
    """logits: (B, C, H, W) main head at the input size; logits16 / logits32: auxiliary heads (None unless aux)."""

    logits: Tensor
    logits16: Tensor | None = None
    logits32: Tensor | None = None


class BiSeNet(nn.Module):
    """BiSeNet face parser. (B, 3, H, W) normalised RGB (H, W multiples of 32) -> BiSeNetLogits at (H, W)."""

    def __init__(self, n_classes: int = NUM_CLASSES) -> None:
        super().__init__()
        self.n_classes = n_classes
        self.cp = ContextPath()
        self.ffm = FeatureFusionModule(256, 256)
        self.conv_out = BiSeNetOutput(256, 256, n_classes)
        self.conv_out16 = BiSeNetOutput(128, 64, n_classes)
        self.conv_out32 = BiSeNetOutput(128, 64, n_classes)

    def forward(self, x: Tensor, aux: bool = False) -> BiSeNetLogits:
        size = x.shape[2:]
        feat_res8, feat_cp8, feat_cp16 = self.cp(x)
        feat_fuse = self.ffm(feat_res8, feat_cp8)  # (B, 256, H/8, W/8)
        up = lambda t: F.interpolate(t, size, mode="bilinear", align_corners=True)  # noqa: E731
        out = up(self.conv_out(feat_fuse))  # (B, C, H, W)
        if not aux:
            return BiSeNetLogits(out)
        return BiSeNetLogits(out, up(self.conv_out16(feat_cp8)), up(self.conv_out32(feat_cp16)))


# ------------------------------------------------------------------------------------------------------ weights

_WRAPPERS = ("state_dict", "params_ema", "params", "model", "net", "network")


def _expected_shapes(n_classes: int = NUM_CLASSES) -> dict[str, tuple[int, ...]]:
    return {k: tuple(v.shape) for k, v in BiSeNet(n_classes).state_dict().items()}


def convert_state_dict(sd: Mapping[str, Any], where: str = "weights") -> tuple[dict[str, Tensor], str]:
    """A loaded BiSeNet checkpoint in any known layout -> (state dict with our keys, layout description).

    Layouts: face-parsing.PyTorch ``79999_iter.pth`` and facexlib ``parsing_bisenet.pth`` (the same keys), wrapped
    in a checkpoint dict (state_dict / params / params_ema / model / net) and/or with a DataParallel ``module.``
    prefix; missing ``num_batches_tracked`` buffers are filled in. Raises LapError (naming ``where``) for another
    architecture, a wrong class count, or wrong shapes.
    """
    layout = []
    obj: Any = sd
    for _ in range(3):  # unwrap checkpoint containers
        if isinstance(obj, Mapping) and not any(isinstance(v, Tensor) for v in obj.values()):
            inner = next((k for k in _WRAPPERS if isinstance(obj.get(k), Mapping)), None)
            if inner is None:
                break
            layout.append(f"['{inner}']")
            obj = obj[inner]
        else:
            break
    if not isinstance(obj, Mapping) or not obj:
        raise LapError(f"{where}: not a state dict (got {type(obj).__name__}); expected BiSeNet face-parsing weights")
    tensors = {str(k): v for k, v in obj.items() if isinstance(v, Tensor)}
    if not tensors:
        raise LapError(f"{where}: holds no tensors; expected BiSeNet face-parsing weights")
    if all(k.startswith("module.") for k in tensors):
        tensors = {k[len("module.") :]: v for k, v in tensors.items()}
        layout.append("module.-prefixed")
    if "conv_out.conv_out.weight" not in tensors or "cp.resnet.conv1.weight" not in tensors:
        sample = ", ".join(sorted(tensors)[:3])
        raise LapError(
            f"{where}: not a BiSeNet face-parsing weight file (no cp.resnet.conv1.weight / conv_out.conv_out.weight; "
            f"keys look like {sample}, ...)"
        )
    n_classes = int(tensors["conv_out.conv_out.weight"].shape[0])
    if n_classes != NUM_CLASSES:
        raise LapError(
            f"{where}: BiSeNet with {n_classes} classes; need the {NUM_CLASSES} CelebAMask-HQ classes "
            f"(face-parsing.PyTorch 79999_iter.pth or facexlib parsing_bisenet.pth)"
        )
    expected = _expected_shapes(NUM_CLASSES)
    out: dict[str, Tensor] = {}
    missing = []
    for k, shape in expected.items():
        if k in tensors:
            if tuple(tensors[k].shape) != shape:
                raise LapError(f"{where}: {k} has shape {tuple(tensors[k].shape)}, expected {shape} (not this BiSeNet)")
            out[k] = tensors[k]
        elif k.endswith("num_batches_tracked"):
            out[k] = torch.zeros((), dtype=torch.long)
        else:
            missing.append(k)
    unexpected = sorted(set(tensors) - set(expected))
    if missing or unexpected:
        parts = []
        if missing:
            parts.append(f"{len(missing)} missing key(s), e.g. {missing[0]}")
        if unexpected:
            parts.append(f"{len(unexpected)} unexpected key(s), e.g. {unexpected[0]}")
        raise LapError(f"{where}: not the face-parsing BiSeNet architecture ({'; '.join(parts)})")
    has_nbt = any(k.endswith("num_batches_tracked") for k in tensors)
    desc = "face-parsing.PyTorch/facexlib keys" + ("" if has_nbt else " (no num_batches_tracked)")
    if layout:
        desc += " " + " ".join(layout)
    return out, desc


def read_weights(path: str | Path) -> Any:
    """torch.load(weights_only=True) with one-line LapErrors for a missing or unreadable file."""
    p = Path(path).expanduser()
    if not p.is_file():
        raise LapError(f"{p}: weight file does not exist")
    try:
        return torch.load(p, map_location="cpu", weights_only=True)
    except Exception as e:  # zip/pickle errors, weights_only refusals
        msg = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        raise LapError(f"{p}: not a readable PyTorch weight file ({msg[:160]})") from None


def load_bisenet(path: str | Path, device: str | torch.device = "cpu") -> BiSeNet:
    """Build BiSeNet(19) from a face-parsing.PyTorch or facexlib weight file; eval mode, on ``device``.

    The detected layout is in ``model.layout``. Raises LapError for a missing/unreadable file, another architecture
    or a class count other than 19.
    """
    p = Path(path).expanduser()
    sd, layout = convert_state_dict(read_weights(p), where=str(p))
    model = BiSeNet(NUM_CLASSES)
    model.load_state_dict(sd, strict=True)
    model.layout = layout  # type: ignore[attr-defined]
    return model.eval().to(device)


# ------------------------------------------------------------------------------------------------------ parser


def preprocess(images: Sequence[np.ndarray], size: int, mean: Sequence[float], std: Sequence[float],
               device: torch.device | str) -> Tensor:
    """RGB uint8 images (H_i, W_i, 3) -> (B, 3, size, size) normalised float32 on ``device``.

    Bilinear resize with antialiasing (like PIL's ``Image.resize(BILINEAR)`` that face-parsing.PyTorch uses).
    """
    out = []
    for im in images:
        t = torch.from_numpy(np.ascontiguousarray(im)).to(device).permute(2, 0, 1)[None].float() / 255.0
        if t.shape[-2:] != (size, size):
            t = F.interpolate(t, (size, size), mode="bilinear", align_corners=False, antialias=True)
        out.append(t)
    x = torch.cat(out).clamp_(0, 1)
    m = torch.tensor(mean, device=x.device).view(1, 3, 1, 1)
    s = torch.tensor(std, device=x.device).view(1, 3, 1, 1)
    return (x - m) / s


class BiSeNetParser:
    """``bisenet`` parser: weights file -> batched label maps at each input's size.

    Args:
        weights: face-parsing.PyTorch ``79999_iter.pth`` or facexlib ``parsing_bisenet.pth`` (local path), or a
            built BiSeNet module.
        device: "cpu", "cuda", "cuda:1", ...
        batch_size: images per forward pass.
        input_size: network input side (512 as trained; smaller is faster and coarser).
        label_order: the network's class order (``labels.read_label_order``): "face-parsing" (79999_iter.pth,
            parsing_bisenet.pth), "celebamask-hq", or a file of 19 class names; its ids are mapped to the project's.
    """

    name = "bisenet"

    def __init__(self, weights: str | Path | BiSeNet, device: str = "cpu", batch_size: int = 8,
                 input_size: int = INPUT_SIZE, mean: Sequence[float] = IMAGENET_MEAN,
                 std: Sequence[float] = IMAGENET_STD, label_order: str = "face-parsing") -> None:
        self.device = torch.device(device)
        self.label_order = read_label_order(label_order)
        self.lookup = torch.from_numpy(order_lookup(self.label_order)).to(self.device)  # network id -> project id
        self.model = weights.eval().to(self.device) if isinstance(weights, BiSeNet) else load_bisenet(weights, self.device)
        if input_size % 32:
            raise LapError(f"bisenet input size {input_size} is not a multiple of 32")
        self.batch_size = max(1, int(batch_size))
        self.input_size = input_size
        self.mean, self.std = tuple(mean), tuple(std)

    @torch.inference_mode()
    def predict(self, images: Sequence[np.ndarray]) -> list[np.ndarray]:
        """(H_i, W_i, 3) uint8 RGB images -> (H_i, W_i) uint8 label maps in the project's ids (argmax at
        input_size mapped through ``lookup``, nearest back)."""
        out: list[np.ndarray] = []
        for i in range(0, len(images), self.batch_size):
            chunk = images[i : i + self.batch_size]
            x = preprocess(chunk, self.input_size, self.mean, self.std, self.device)
            labels = self.lookup[self.model(x).logits.argmax(1)]  # (b, S, S) uint8, the project's ids
            for im, lab in zip(chunk, labels):
                h, w = im.shape[:2]
                if (h, w) != tuple(lab.shape):
                    lab = F.interpolate(lab[None, None].float(), (h, w), mode="nearest-exact")[0, 0].to(torch.uint8)
                out.append(lab.cpu().numpy())
        return out

    def __call__(self, images: Sequence[np.ndarray]) -> list[ParseResult]:
        return [ParseResult(seg) for seg in self.predict(images)]
