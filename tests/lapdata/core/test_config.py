from dataclasses import dataclass, field

import pytest

from lapdata.core.config import load_config, to_dict
from lapdata.core.errors import LapError


@dataclass(frozen=True)
class Optim:
    lr: float = 1e-4
    betas: tuple[float, float] = (0.9, 0.999)


@dataclass(frozen=True)
class Cfg:
    name: str = "x"
    steps: int = 10
    amp: bool = False
    weights: str | None = None
    optim: Optim = field(default_factory=Optim)


def test_defaults_and_nested(tmp_path):
    p = tmp_path / "c.yaml"
    p.write_text("steps: 5\noptim:\n  lr: 0.001\n  betas: [0.5, 0.9]\n")
    c = load_config(Cfg, p)
    assert c == Cfg(steps=5, optim=Optim(lr=1e-3, betas=(0.5, 0.9)))
    assert to_dict(c)["optim"]["betas"] == [0.5, 0.9]


def test_overrides_parse_yaml_scalars():
    c = load_config(Cfg, {"steps": 3}, overrides={"optim.lr": "2e-3", "amp": "true", "weights": "a.pth"})
    assert c.optim.lr == 2e-3 and c.amp is True and c.weights == "a.pth" and c.steps == 3


def test_unknown_key_raises_naming_it(tmp_path):
    p = tmp_path / "c.yaml"
    p.write_text("stepz: 5\n")
    with pytest.raises(LapError, match="stepz"):
        load_config(Cfg, p)
    with pytest.raises(LapError, match="lrr"):
        load_config(Cfg, {"optim": {"lrr": 1}})


def test_type_errors_and_missing_file(tmp_path):
    with pytest.raises(LapError, match="expected an integer"):
        load_config(Cfg, {"steps": "many"})
    with pytest.raises(LapError, match="does not exist"):
        load_config(Cfg, tmp_path / "nope.yaml")
    (tmp_path / "bad.yaml").write_text("a: [1, 2\n")
    with pytest.raises(LapError, match="not valid YAML"):
        load_config(Cfg, tmp_path / "bad.yaml")
