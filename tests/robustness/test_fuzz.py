"""Fuzzing: model-card JSON and CLI option values never cause an unhandled exception."""

from __future__ import annotations

import contextlib
import json
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from geoseg.cli import main
from geoseg.errors import ModelCardError
from geoseg.models import ModelCard
from tests.conftest import random_image, tiny_card, write_raster

json_values = st.recursive(
    st.none()
    | st.booleans()
    | st.integers(-(2**40), 2**40)
    | st.floats(allow_nan=True)
    | st.text(max_size=8),
    lambda children: (
        st.lists(children, max_size=4) | st.dictionaries(st.text(max_size=8), children, max_size=4)
    ),
    max_leaves=12,
)
BASE = tiny_card().to_dict()


@settings(max_examples=300, deadline=None)
@given(key=st.sampled_from(sorted(BASE)), value=json_values)
def test_card_field_mutations_raise_only_model_card_errors(key, value):
    d = {**BASE, key: value}
    try:
        card = ModelCard.from_dict(json.loads(json.dumps(d)))
    except ModelCardError:
        return
    except ValueError as exc:  # json.dumps of NaN is fine; anything else must be ModelCardError
        pytest.fail(f"{type(exc).__name__} escaped: {exc}")
    assert ModelCard.from_json(card.to_json()) == card


@settings(max_examples=200, deadline=None)
@given(doc=json_values)
def test_arbitrary_json_documents(doc):
    with contextlib.suppress(ModelCardError):
        ModelCard.from_json(json.dumps(doc))


@settings(max_examples=100, deadline=None)
@given(
    text=st.text(max_size=40)
    | st.sampled_from(["{", "[]", "null", '{"classes": 5}', '{"name": "x", "bands": "rgb"}'])
)
def test_card_text_that_is_not_even_json(text):
    with contextlib.suppress(ModelCardError):
        ModelCard.from_json(text)


option_values = st.one_of(
    st.integers(-5, 5000).map(str),
    st.sampled_from(
        [
            "",
            "0",
            "-1",
            "1.5",
            "abc",
            "1,2",
            "3,2,1",
            "1,1,1",
            "0,255",
            "255,0",
            "nan,1",
            "inf,2",
            "cuda",
            "cuda:0",
            "mps",
            "cpu",
            "auto",
            "EPSG:4326",
            "EPSG:99999",
            "1e309",
            "1,2,3,4",
            "9,9,9",
        ]
    ),
    st.text(alphabet="0123456789,.-:abcEPSG", max_size=12),
)
OPTIONS = [
    "--tile",
    "--overlap",
    "--batch-size",
    "--bands",
    "--input-range",
    "--device",
    "--assume-crs",
    "--threads",
]


@pytest.fixture(scope="module")
def fuzz_inputs(tmp_path_factory, tiny_model_dir) -> tuple[Path, Path]:
    d = tmp_path_factory.mktemp("fuzz")
    return write_raster(d / "in.tif", random_image(40, 50)), tiny_model_dir


@settings(
    max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(opts=st.lists(st.tuples(st.sampled_from(OPTIONS), option_values), min_size=1, max_size=3))
def test_cli_options_give_a_result_or_one_error_line(opts, fuzz_inputs, tmp_path_factory, capfd):
    src, model = fuzz_inputs
    out = tmp_path_factory.mktemp("o") / "out.tif"
    args = ["-q", "predict", str(src), "-o", str(out), "--model", str(model)]
    for name, value in opts:
        args += [name, value]
    with pytest.raises(SystemExit) as info:
        main(args)
        raise SystemExit(0)
    err = capfd.readouterr().err
    assert "Traceback" not in err, err
    code = info.value.code or 0
    if code == 0:
        assert out.exists()
    else:
        assert code in (1, 2), err
        lines = [line for line in err.splitlines() if line.strip()]
        assert lines and ("error" in lines[-1].lower()), err
        assert not out.exists()
