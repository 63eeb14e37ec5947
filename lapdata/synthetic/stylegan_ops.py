"""What the native StyleGAN generators share: their interface (``StyleNet``) and the layers' arithmetic in plain
PyTorch (no compiled ops): FIR up/down-sampling, modulated convolution, bias + leaky ReLU with gain and clamp,
second-moment normalisation.

These are the published generators' own definitions (NVlabs' ``upfirdn2d`` / ``bias_act`` / ``modulated_conv2d``
reference paths, which rosinality's ``op/`` computes the same way), written here so that no CUDA extension is
built and nothing is imported from the files' code. Used by ``stylegan2_nets`` and ``stylegan1``.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as Fn
from torch import nn

SQRT2 = math.sqrt(2.0)


class StyleNet(nn.Module):
    """A generator split as StyleGAN is: ``z_to_w(z (N, z_dim)) -> w (N, w_dim)`` and
    ``ws_to_image(ws (N, num_ws, w_dim)) -> image (N, C, H, W)`` in [-1, 1]; ``tracked_w_avg()`` is the model's own
    mean of w, (w_dim,) (None when the file has none); ``kind`` names the layout it was read from. (The methods are
    not called ``mapping``/``synthesis``: those are submodule names of the published layouts.)"""

    kind = ""
    z_dim = w_dim = num_ws = resolution = 0

    def z_to_w(self, z: torch.Tensor) -> torch.Tensor:
        raise NotImplementedError

    def ws_to_image(self, ws: torch.Tensor) -> torch.Tensor:
        raise NotImplementedError

    def tracked_w_avg(self) -> torch.Tensor | None:
        return None


def holder(**tensors: torch.Tensor) -> nn.Module:
    """An empty module holding the given tensors as parameters (for the state-dict names of the published
    layouts, e.g. ``noise.weight``)."""
    m = nn.Module()
    for k, v in tensors.items():
        m.register_parameter(k, nn.Parameter(v, requires_grad=False))
    return m


def fir_filter(taps: list[float] | tuple[float, ...] = (1, 3, 3, 1)) -> torch.Tensor:
    """(k, k) float32 low-pass filter: the outer product of ``taps`` normalised to sum 1."""
    f = torch.as_tensor(taps, dtype=torch.float32)
    f = f[:, None] * f[None, :] if f.ndim == 1 else f
    return f / f.sum()


def upfirdn2d(x: torch.Tensor, f: torch.Tensor, up: int = 1, down: int = 1,
              pad: tuple[int, int, int, int] = (0, 0, 0, 0), gain: float = 1.0) -> torch.Tensor:
    """Upsample by zero insertion, pad (x0, x1, y0, y1; negative crops), convolve with ``f``, keep every
    ``down``-th pixel. x: (N, C, H, W); f: (kh, kw), applied as a convolution (flipped), scaled by ``gain``."""
    n, c, h, w = x.shape
    if up > 1:
        x = Fn.pad(x.reshape(n, c, h, 1, w, 1), [0, up - 1, 0, 0, 0, up - 1]).reshape(n, c, h * up, w * up)
    px0, px1, py0, py1 = pad
    x = Fn.pad(x, [max(px0, 0), max(px1, 0), max(py0, 0), max(py1, 0)])
    x = x[:, :, max(-py0, 0): x.shape[2] - max(-py1, 0), max(-px0, 0): x.shape[3] - max(-px1, 0)]
    k = (f * gain).flip([0, 1]).to(x.dtype)
    x = Fn.conv2d(x, k[None, None].expand(c, 1, *k.shape), groups=c)
    return x[:, :, ::down, ::down] if down > 1 else x


def upsample2d(x: torch.Tensor, f: torch.Tensor, gain: float = 4.0) -> torch.Tensor:
    """x2 upsampling with ``f`` (k x k, k = 4 for [1, 3, 3, 1]; ``gain`` 4 keeps the mean of a normalised filter,
    1 for a filter stored pre-scaled): (N, C, H, W) -> (N, C, 2H, 2W)."""
    k = f.shape[-1]
    return upfirdn2d(x, f, up=2, pad=((k + 1) // 2, (k - 2) // 2, (k + 1) // 2, (k - 2) // 2), gain=gain)


def modulated_conv2d(x: torch.Tensor, weight: torch.Tensor, styles: torch.Tensor, demodulate: bool = True,
                     up: bool = False, f: torch.Tensor | None = None, up_gain: float = 4.0) -> torch.Tensor:
    """StyleGAN2's modulated convolution, one grouped convolution for the batch.

    x: (N, I, H, W); weight: (O, I, k, k); styles: (N, I). Demodulation divides each output channel's modulated
    weights by sqrt(sum of squares + 1e-8). ``up``: transposed stride-2 convolution then the ``f`` filter (pad 1,
    times ``up_gain``: 4 for a normalised filter, 1 for one stored pre-scaled), giving (N, O, 2H, 2W); else 'same'
    padding, (N, O, H, W)."""
    n, i, h, w_ = x.shape
    o, _, kh, kw = weight.shape
    wt = weight[None] * styles.reshape(n, 1, i, 1, 1)  # (N, O, I, k, k)
    if demodulate:
        wt = wt * (wt.square().sum(dim=[2, 3, 4]) + 1e-8).rsqrt().reshape(n, o, 1, 1, 1)
    x = x.reshape(1, n * i, h, w_)
    if up:
        wt = wt.transpose(1, 2).reshape(n * i, o, kh, kw)
        x = Fn.conv_transpose2d(x, wt, stride=2, groups=n)
        x = upfirdn2d(x, f, pad=(1, 1, 1, 1), gain=up_gain)
    else:
        x = Fn.conv2d(x, wt.reshape(n * o, i, kh, kw), padding=kh // 2, groups=n)
    return x.reshape(n, o, *x.shape[2:])


def bias_act(x: torch.Tensor, b: torch.Tensor | None, lrelu: bool = True, gain: float = SQRT2,
             clamp: float | None = None) -> torch.Tensor:
    """x + b (per channel, dim 1), leaky ReLU (slope 0.2) when ``lrelu``, times ``gain``, clamped to +-clamp."""
    if b is not None:
        x = x + b.reshape([1, -1] + [1] * (x.ndim - 2))
    if lrelu:
        x = Fn.leaky_relu(x, 0.2)
    if gain != 1:
        x = x * gain
    return x.clamp(-clamp, clamp) if clamp is not None else x


def normalize_2nd_moment(x: torch.Tensor, eps: float = 1e-8) -> torch.Tensor:
    """x / sqrt(mean(x^2 over dim 1) + eps): the mappings' input normalisation (PixelNorm)."""
    return x * (x.square().mean(dim=1, keepdim=True) + eps).rsqrt()
