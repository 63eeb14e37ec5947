"""lapdata.core.cliconfig: command-line options derived from config dataclasses."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

import pytest
import typer
from typer.testing import CliRunner

from lapdata.core.cliconfig import config_parameters, config_values, field_comments, option, with_parameters
from lapdata.core.errors import LapError


@dataclass(frozen=True)
class ToyConfig:
    src: str                                  # the source folder
    size: int = 128                           # output face size in pixels
    mode: Literal["auto", "aligned"] = "auto"  # crop rule
    part: tuple[int, int] = (0, 1)            # part I of N
    ratio: float | None = None
    dedup: bool = True                        # skip duplicates


def make_app(override: bool = False):
    got = {}

    def cmd(**kw):
        got.update(kw)

    app = typer.Typer(add_completion=False)
    params = [option("verbose", bool, False, "--verbose"),
              *config_parameters(ToyConfig, required=("src",), override=override, short={"size": "-s"})]
    app.command("toy")(with_parameters(cmd, params))
    app.command("other")(lambda: None)
    return app, got


def test_field_comments_are_the_help():
    c = field_comments(ToyConfig)
    assert c["size"] == "output face size in pixels" and c["mode"] == "crop rule" and "ratio" not in c


def test_options_parse_into_the_dataclass():
    app, got = make_app()
    res = CliRunner().invoke(app, ["toy", "--src", "d", "-s", "64", "--mode", "aligned", "--part", "1/4",
                                   "--no-dedup", "--ratio", "0.5"])
    assert res.exit_code == 0, res.output
    cfg = ToyConfig(**config_values(ToyConfig, got))
    assert cfg == ToyConfig(src="d", size=64, mode="aligned", part=(1, 4), ratio=0.5, dedup=False)
    assert got["verbose"] is False


def test_defaults_come_from_the_dataclass():
    app, got = make_app()
    assert CliRunner().invoke(app, ["toy", "--src", "d"]).exit_code == 0
    assert ToyConfig(**config_values(ToyConfig, got)) == ToyConfig(src="d")


def test_help_shows_choices_comments_and_defaults():
    app, _ = make_app()
    out = CliRunner().invoke(app, ["toy", "--help"], env={"COLUMNS": "200"}).output
    assert "auto|aligned" in out and "the source folder [required]" in out
    # each option's help is its field's comment followed by that field's default
    for text in ("output face size in pixels [default: 128]", "crop rule [default: auto]", "part I of N [default: 0/1]",
                 "skip duplicates [default: dedup]"):
        assert text in out, text


def test_bad_choice_and_missing_required_fail_with_exit_2():
    app, _ = make_app()
    assert CliRunner().invoke(app, ["toy", "--src", "d", "--mode", "bogus"]).exit_code == 2
    assert CliRunner().invoke(app, ["toy"]).exit_code == 2


def test_override_mode_leaves_unset_options_none():
    app, got = make_app(override=True)
    assert CliRunner().invoke(app, ["toy", "--src", "d", "--size", "32"]).exit_code == 0
    assert got["size"] == 32 and got["mode"] is None and got["dedup"] is None and got["part"] is None


def test_bad_tuple_is_a_one_line_error():
    with pytest.raises(LapError, match="--part '1/2/3': expected 2 values"):
        config_values(ToyConfig, {"part": "1/2/3"})
    with pytest.raises(LapError, match="not a list of int"):
        config_values(ToyConfig, {"part": "a,b"})


@dataclass(frozen=True)
class ListConfig:
    names: tuple[str, ...] = ()        # a repeatable option
    only: tuple[str, ...] | None = None


def test_a_repeatable_option_not_given_keeps_the_fields_default():
    """click answers None for a repeatable option that is not given; a tuple field keeps its own default (()),
    an Optional one gets None (``lapmodel evaluate --keypoints`` without ``--identities`` once crashed on this)."""
    assert config_values(ListConfig, {"names": None, "only": None}) == {"only": None}
    assert ListConfig(**config_values(ListConfig, {"names": None})).names == ()
    assert config_values(ListConfig, {"names": ["a", "b"]}) == {"names": ("a", "b")}
