"""BiSeNet: both weight-file key layouts load to identical outputs; shapes; wrong files fail with one line.

face-parsing.PyTorch (model.py/resnet.py) and facexlib (parsing/bisenet.py, parsing/resnet.py) define the network
with the same module names, so ``79999_iter.pth`` and ``parsing_bisenet.pth`` share one key layout. The tests build
each file the way its project saves it (face-parsing.PyTorch train.py: ``net.module.state_dict()``; facexlib /
BasicSR checkpoints: plain or ``{"params": ...}``), plus a DataParallel ``module.`` prefix and a pre-0.4.1 file
without ``num_batches_tracked``.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch

from lapdata.core.errors import LapError
from lapdata.parsing.bisenet import BiSeNet, BiSeNetParser, convert_state_dict, load_bisenet
from lapdata.parsing.labels import CLASS_ID, CLASSES, FACE_PARSING_CLASSES, order_lookup, read_label_order
from tests.builders import forced_state_dict, random_bisenet

# a few keys and shapes of the reference weight files, written out by hand
REFERENCE_KEYS = {
    "cp.resnet.conv1.weight": (64, 3, 7, 7),
    "cp.resnet.layer2.0.downsample.0.weight": (128, 64, 1, 1),
    "cp.resnet.layer4.1.bn2.running_var": (512,),
    "cp.arm16.conv.conv.weight": (128, 256, 3, 3),
    "cp.arm32.conv_atten.weight": (128, 128, 1, 1),
    "cp.conv_avg.conv.weight": (128, 512, 1, 1),
    "cp.conv_head16.bn.weight": (128,),
    "ffm.convblk.conv.weight": (256, 256, 1, 1),
    "ffm.conv1.weight": (64, 256, 1, 1),
    "conv_out.conv_out.weight": (19, 256, 1, 1),
    "conv_out16.conv.conv.weight": (64, 128, 3, 3),
    "conv_out32.conv_out.weight": (19, 64, 1, 1),
}


@pytest.fixture(scope="module")
def model():
    return random_bisenet()


def test_reference_key_layout(model):
    sd = model.state_dict()
    for k, shape in REFERENCE_KEYS.items():
        assert tuple(sd[k].shape) == shape, k
    assert sum(p.numel() for p in model.parameters()) == 13_300_416  # the 53 MB 79999_iter.pth


def _layouts(model):
    sd = {k: v.clone() for k, v in model.state_dict().items()}
    return {
        "face-parsing.PyTorch": sd,
        "facexlib": dict(sd),
        "facexlib-params": {"params": dict(sd)},
        "dataparallel": {"module." + k: v for k, v in sd.items()},
        "old-torch": {k: v for k, v in sd.items() if not k.endswith("num_batches_tracked")},
        "checkpoint": {"state_dict": {"module." + k: v for k, v in sd.items()}, "epoch": 3},
    }


def test_both_layouts_identical_outputs(model, tmp_path):
    x = torch.randn(2, 3, 64, 64, generator=torch.Generator().manual_seed(1))
    with torch.inference_mode():
        ref = model(x, aux=True)
    for name, obj in _layouts(model).items():
        p = tmp_path / f"{name}.pth"
        torch.save(obj, p)
        m = load_bisenet(p)
        assert not m.training
        with torch.inference_mode():
            out = m(x, aux=True)
        assert torch.equal(out.logits, ref.logits), name
        assert torch.equal(out.logits16, ref.logits16) and torch.equal(out.logits32, ref.logits32), name
        assert "face-parsing.PyTorch/facexlib" in m.layout


def test_output_shapes_and_classes(model):
    x = torch.randn(2, 3, 96, 64)
    with torch.inference_mode():
        out = model(x)
        full = model(x, aux=True)
    assert out.logits.shape == (2, 19, 96, 64) and out.logits16 is None and out.logits32 is None
    assert full.logits16.shape == full.logits32.shape == (2, 19, 96, 64)  # aux heads upsampled to the input
    assert torch.equal(full.logits, out.logits) and not torch.allclose(full.logits16, full.logits)


def test_parser_sizes_and_labels(model):
    parser = BiSeNetParser(model, batch_size=2, input_size=64)
    rng = np.random.default_rng(0)
    imgs = [rng.integers(0, 255, (h, w, 3), dtype=np.uint8) for h, w in [(40, 40), (70, 50), (64, 64)]]
    res = parser(imgs)
    assert [r.seg.shape for r in res] == [(40, 40), (70, 50), (64, 64)]
    for r in res:
        assert r.ok and r.seg.dtype == np.uint8 and r.seg.max() < 19
    # batching does not change the result
    single = BiSeNetParser(model, batch_size=1, input_size=64)(imgs)
    assert all(np.array_equal(a.seg, b.seg) for a, b in zip(res, single))


def test_parser_resizes_like_reference(model):
    # a 64x64 input at input_size 64: the label map is exactly the argmax of the network on the normalised image,
    # the network's (face-parsing.PyTorch) ids mapped to the project's
    img = np.random.default_rng(3).integers(0, 255, (64, 64, 3), dtype=np.uint8)
    seg = BiSeNetParser(model, input_size=64)([img])[0].seg
    x = torch.from_numpy(img).permute(2, 0, 1)[None].float() / 255
    x = (x - torch.tensor([0.485, 0.456, 0.406]).view(1, 3, 1, 1)) / torch.tensor([0.229, 0.224, 0.225]).view(1, 3, 1, 1)
    with torch.inference_mode():
        ref = model(x).logits.argmax(1)[0].numpy()
    assert np.array_equal(seg, order_lookup(FACE_PARSING_CLASSES)[ref])


def test_wrong_class_count(tmp_path):
    torch.manual_seed(0)
    p = tmp_path / "11cls.pth"
    torch.save(BiSeNet(n_classes=11).state_dict(), p)
    with pytest.raises(LapError, match=r"11cls.pth: BiSeNet with 11 classes; need the 19"):
        load_bisenet(p)


def test_wrong_architecture(tmp_path, model):
    p = tmp_path / "other.pth"
    torch.save({"backbone.conv1.weight": torch.zeros(64, 3, 7, 7), "fc.weight": torch.zeros(10, 512)}, p)
    with pytest.raises(LapError, match=r"other.pth: not a BiSeNet face-parsing weight file"):
        load_bisenet(p)
    sd = dict(model.state_dict())
    sd["sp.conv1.conv.weight"] = torch.zeros(64, 3, 7, 7)  # original BiSeNet with a spatial path
    torch.save(sd, p)
    with pytest.raises(LapError, match=r"not the face-parsing BiSeNet architecture \(1 unexpected key"):
        load_bisenet(p)
    sd = dict(model.state_dict())
    sd["ffm.conv1.weight"] = torch.zeros(32, 256, 1, 1)
    torch.save(sd, p)
    with pytest.raises(LapError, match=r"ffm.conv1.weight has shape \(32, 256, 1, 1\), expected \(64, 256, 1, 1\)"):
        load_bisenet(p)
    sd = dict(model.state_dict())
    del sd["cp.arm16.conv_atten.weight"]
    torch.save(sd, p)
    with pytest.raises(LapError, match=r"1 missing key"):
        load_bisenet(p)


def test_unreadable_and_missing(tmp_path):
    p = tmp_path / "junk.pth"
    p.write_text("not a checkpoint")
    with pytest.raises(LapError, match=r"junk.pth: not a readable PyTorch weight file"):
        load_bisenet(p)
    with pytest.raises(LapError, match=r"nope.pth: weight file does not exist"):
        load_bisenet(tmp_path / "nope.pth")
    with pytest.raises(LapError, match="x.pth: holds no tensors"):
        convert_state_dict({"epoch": 3}, "x.pth")
    with pytest.raises(LapError, match="x.pth: not a state dict"):
        convert_state_dict([1, 2], "x.pth")


@pytest.mark.gpu
def test_cuda_matches_cpu(model):
    img = np.random.default_rng(0).integers(0, 255, (96, 96, 3), dtype=np.uint8)
    a = BiSeNetParser(model, input_size=512)([img])[0].seg
    b = BiSeNetParser(random_bisenet(), device="cuda", input_size=512)([img])[0].seg
    assert (a == b).mean() > 0.99


# ------------------------------------------------------------------------------------------------ class ids
# face-parsing.PyTorch prepropess_data.py builds its training masks with label = 1 + index in
# atts = ['skin', 'l_brow', 'r_brow', 'l_eye', 'r_eye', 'eye_g', 'l_ear', 'r_ear', 'ear_r', 'nose', 'mouth', 'u_lip',
#         'l_lip', 'neck', 'neck_l', 'cloth', 'hair', 'hat'], so 79999_iter.pth answers these ids (facts):
NETWORK_ID = {"nose": 10, "hair": 17, "l_lip": 13, "r_brow": 3}
# CelebAMask-HQ g_mask.py label_list (the project's ids): nose 2, hair 13, l_lip 12, r_brow 7 (facts)
PROJECT_ID = {"nose": 2, "hair": 13, "l_lip": 12, "r_brow": 7}


def test_label_orders_are_the_published_ones():
    assert CLASSES[1:] == ("skin", "nose", "eye_g", "l_eye", "r_eye", "l_brow", "r_brow", "l_ear", "r_ear", "mouth",
                           "u_lip", "l_lip", "hair", "hat", "ear_r", "neck_l", "neck", "cloth")
    assert FACE_PARSING_CLASSES[1:] == ("skin", "l_brow", "r_brow", "l_eye", "r_eye", "eye_g", "l_ear", "r_ear",
                                        "ear_r", "nose", "mouth", "u_lip", "l_lip", "neck", "neck_l", "cloth", "hair",
                                        "hat")
    assert {n: CLASS_ID[n] for n in PROJECT_ID} == PROJECT_ID
    lut = order_lookup(FACE_PARSING_CLASSES)
    assert {n: int(lut[i]) for n, i in NETWORK_ID.items()} == PROJECT_ID
    assert sorted(lut.tolist()) == list(range(19))
    assert order_lookup(CLASSES).tolist() == list(range(19))


@pytest.mark.parametrize("name", sorted(NETWORK_ID))
def test_forced_class_is_stored_as_its_project_label(tmp_path, name):
    w = tmp_path / "79999_iter.pth"
    torch.save(forced_state_dict(NETWORK_ID[name]), w)
    img = np.random.default_rng(0).integers(0, 255, (40, 48, 3), dtype=np.uint8)
    seg = BiSeNetParser(w, input_size=64)([img])[0].seg  # default order: face-parsing
    assert seg.shape == (40, 48) and (seg == PROJECT_ID[name]).all()
    seg = BiSeNetParser(w, input_size=64, label_order="celebamask-hq")([img])[0].seg  # weights in our order
    assert (seg == NETWORK_ID[name]).all()


def test_label_order_file(tmp_path):
    order = list(reversed(CLASSES))  # network id k means CLASSES[18 - k]
    f = tmp_path / "order.txt"
    f.write_text("# my network\n" + "\n".join(order) + "\n\n")
    assert read_label_order(str(f)) == tuple(order)
    w = tmp_path / "w.pth"
    torch.save(forced_state_dict(5), w)
    seg = BiSeNetParser(w, input_size=64, label_order=str(f))([np.zeros((32, 32, 3), np.uint8)])[0].seg
    assert (seg == CLASS_ID[order[5]]).all() and CLASS_ID[order[5]] == 13  # hair
    f.write_text("\n".join(order[:-1] + ["nose"]))
    with pytest.raises(LapError, match=r"order.txt: a label order needs the 19 class names once each.*18 distinct"):
        read_label_order(str(f))
    f.write_text("\n".join(order[:-1] + ["beard"]))
    with pytest.raises(LapError, match=r"unknown class 'beard'"):
        read_label_order(str(f))
    with pytest.raises(LapError, match=r"--label-order 'nope': not one of face-parsing, celebamask-hq"):
        read_label_order("nope")
