"""The study commands' shared arguments: NAME=RUN_OR_PRETRAINED models and the common options."""

from __future__ import annotations

from pathlib import Path

import pytest

from hpc_sr.errors import HpcSrError
from hpc_sr.studies.common import (
    StudyArgumentError,
    add_data,
    add_limit,
    add_models,
    add_out,
    add_seed,
    fail,
    parse_models,
    parse_named,
    study_parser,
)


def test_parse_named_splits_and_names_bare_runs() -> None:
    assert parse_named("G=runs/g1") == ("G", "runs/g1")
    assert parse_named("G=a=b") == ("G", "a=b")  # only the first = separates
    assert parse_named("runs/G1e2") == ("G1e2", "runs/G1e2")
    assert parse_named("deeplense-small") == ("deeplense-small", "deeplense-small")


@pytest.mark.parametrize(
    ("spec", "kw", "message"),
    [
        ("=x", {}, "--model '=x': expected NAME=RUN_OR_PRETRAINED"),
        ("G=", {}, "--model 'G=': expected NAME=RUN_OR_PRETRAINED"),
        ("wide", {"bare": False, "form": "PRESET=RUN"}, "--model 'wide': expected PRESET=RUN"),
        ("=x", {"flag": "--gan"}, "--gan '=x'"),
    ],
)
def test_parse_named_errors_name_the_bad_argument(spec: str, kw: dict, message: str) -> None:
    with pytest.raises(StudyArgumentError) as err:
        parse_named(spec, **kw)
    assert message in str(err.value)
    assert isinstance(err.value, HpcSrError) and isinstance(err.value, ValueError)


def test_parse_models_keeps_order_and_rejects_taken_names() -> None:
    assert list(parse_models(["b=1", "a=2", "runs/c"])) == ["b", "a", "c"]
    assert parse_models([]) == {}
    with pytest.raises(
        StudyArgumentError, match=r"--model 'a=3': the name 'a' is taken \(an earlier --model\)"
    ):
        parse_models(["a=1", "a=3"])
    with pytest.raises(StudyArgumentError, match=r"--gan 'HR=x': the name 'HR' is taken \(HR, bicubic, "):
        parse_models(["HR=x"], "--gan", reserved=("HR", "bicubic"))


def test_common_options_parse(capsys: pytest.CaptureFixture[str]) -> None:
    ap = study_parser("demo", "One line.\n\nMore text.", prog="prog demo")
    add_data(ap)
    add_models(ap)
    add_models(ap, "--psnr", "the PSNR model", required=True)
    add_limit(ap, 5)
    add_seed(ap)
    add_out(ap, "outdir")
    a = ap.parse_args(["DATA", "--psnr", "P=p", "--model", "a=1", "--model", "b=2", "--seed", "3"])
    assert (a.data, a.psnr, a.model, a.limit, a.seed, a.out) == (
        "DATA",
        "P=p",
        ["a=1", "b=2"],
        5,
        3,
        Path("outdir"),
    )
    assert ap.description == "One line." and ap.prog == "prog demo"
    with pytest.raises(SystemExit):
        ap.parse_args(["DATA"])  # --psnr is required
    required = study_parser("demo", "Doc.")
    add_out(required, None)
    with pytest.raises(SystemExit):
        required.parse_args([])
    assert "--out" in capsys.readouterr().err and required.prog == "hpc-sr study demo"
    assert fail("prog demo", HpcSrError("boom")) == 2
    assert capsys.readouterr().err == "prog demo: error: boom\n"
