"""Options from mappings and YAML: conversions, and errors that name the field (or flag)."""

from __future__ import annotations

from pathlib import Path

import pytest
from click.testing import CliRunner

from geoseg.errors import ConfigError
from geoseg.evaluate import EvalConfig
from geoseg.pipeline import PredictConfig, VectorizeConfig


def test_predict_options_from_a_mapping_are_converted():
    cfg = PredictConfig.from_dict(
        {"tile": 256, "bands": [3, 2, 1], "input_range": [0, 10000], "rpc_dem": "dem.tif"}
    )
    assert cfg.tile == 256 and cfg.bands == (3, 2, 1)
    assert cfg.input_range == (0.0, 10000.0) and cfg.rpc_dem == Path("dem.tif")
    assert PredictConfig.from_dict(None) == PredictConfig()
    assert PredictConfig.from_yaml("tile: 128\ntta: flips\n") == PredictConfig(
        tile=128, tta="flips"
    )


@pytest.mark.parametrize(
    ("data", "message", "field"),
    [
        ({"tlie": 3}, r"predict: unknown setting 'tlie' \(did you mean 'tile'\?\)", "tlie"),
        ({"tile": "big"}, r"^predict\.tile must be an integer, got 'big'$", "tile"),
        ({"tile": 0}, r"^predict\.tile must be >= 1, got 0$", "tile"),
        ({"bands": "3,2,1"}, r"^predict\.bands must be a list", "bands"),
        ({"bands": [3, "x"]}, r"^predict\.bands\[1\] must be an integer", "bands"),
        ({"input_range": [0]}, r"^predict\.input_range must be a list of 2 values", "input_range"),
        ({"separate": "yes"}, r"^predict\.separate must be true or false", "separate"),
        ({"backend": "tensorrt"}, r"^predict\.backend must be one of", "backend"),
        (
            {"rpc_height": float("nan")},
            r"^predict\.rpc_height must be a finite number",
            "rpc_height",
        ),
        ({"region": [0, 0, 1, 1]}, r"unknown setting 'region'", "region"),
        ([1, 2], r"^predict must be a mapping of settings, got list$", "predict"),
    ],
)
def test_bad_predict_options_name_their_field(data, message, field):
    with pytest.raises(ConfigError, match=message) as info:
        PredictConfig.from_dict(data)
    assert info.value.field == field


def test_vectorize_and_evaluate_options_nest_and_name_the_path():
    v = VectorizeConfig.from_dict({"cleanup": {"building": {"min_area_m2": 8}}, "block_rows": 64})
    assert v.cleanup is not None and v.cleanup["building"].min_area_m2 == 8 and v.block_rows == 64
    with pytest.raises(ConfigError, match=r"^vectorize\.cleanup\.building: .*colour"):
        VectorizeConfig.from_dict({"cleanup": {"building": {"colour": 1}}})
    with pytest.raises(ConfigError, match=r"^vectorize\.block_rows must be an integer"):
        VectorizeConfig.from_dict({"block_rows": 1.5})
    e = EvalConfig.from_dict(
        {"class_map": {1: "building", 2: "ignore"}, "labelled_classes": ["building"],
         "predict": {"tile": 64}}
    )  # fmt: skip
    assert e.class_map == ((1, "building"), (2, "ignore")) and e.predict.tile == 64
    assert e.labelled_classes == ("building",)
    with pytest.raises(ConfigError, match=r"^evaluate\.predict\.tile must be >= 1, got 0$"):
        EvalConfig.from_dict({"predict": {"tile": 0}})
    with pytest.raises(ConfigError, match=r"^evaluate\.iou_threshold must be in \(0, 1\]"):
        EvalConfig.from_dict({"iou_threshold": 2})
    with pytest.raises(ConfigError, match=r"^evaluate\.class_map must map label values"):
        EvalConfig.from_dict({"class_map": ["building"]})


def test_yaml_syntax_errors_give_the_line():
    with pytest.raises(ConfigError, match=r"^predict is not valid YAML at line 3, column 1: ") as e:
        PredictConfig.from_yaml("tile: 64\nbands: [1, 2\n")
    assert "\n" not in str(e.value)


def test_the_command_line_names_flags_where_the_library_names_parameters(tmp_path):
    from geoseg.cli.main import cli

    runner = CliRunner()
    src = tmp_path / "missing.tif"
    # Option checks run before the input is opened, so a missing file is never reached.
    for argv, flag in (
        (["predict", str(src), "-o", str(tmp_path / "o.tif"), "--batch-size", "0"],
         "--batch-size must be >= 1, got 0"),
        (["predict", str(src), "-o", str(tmp_path / "o.tif"), "--readers", "99"],
         "--readers must be between 1 and"),
        (["predict", str(src), "-o", str(tmp_path / "o.tif"), "--backend", "onnx", "--compile"],
         "--compile applies to the PyTorch backend"),
    ):  # fmt: skip
        result = runner.invoke(cli, argv)
        assert result.exit_code != 0
        assert isinstance(result.exception, ConfigError), result.output
        assert str(result.exception).startswith(flag), str(result.exception)
    with pytest.raises(ConfigError, match=r"^batch_size must be >= 1"):
        PredictConfig(batch_size=0)  # the library itself names the parameter
