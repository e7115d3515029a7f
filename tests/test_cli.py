"""The gcc-gan command line, and the example script a user copies."""

import json
import runpy
from pathlib import Path

import torch
from typer.testing import CliRunner

from gcc_gan import trace, zoo
from gcc_gan.cli import app

runner = CliRunner()
TINY = ["--arg", "ngf=8", "--arg", "n_blocks=1", "--input-shape", "1,3,32,32"]


def test_info_prints_the_layer_table():
    result = runner.invoke(app, ["info", "gcc_gan.zoo:resnet_generator", *TINY])
    assert result.exit_code == 0, result.output
    assert "ResnetGenerator" in result.output
    assert "conv_transpose2d" in result.output
    assert "total at batch 1" in result.output


def test_info_json_matches_the_api():
    result = runner.invoke(app, ["info", "gcc_gan.zoo:resnet_generator", *TINY, "--json"])
    assert result.exit_code == 0, result.output
    data = json.loads(result.output)
    graph = trace(zoo.resnet_generator(ngf=8, n_blocks=1), (torch.randn(1, 3, 32, 32),))
    assert data["macs"] == graph.macs and data["lit_macs"] == graph.lit_macs
    assert data["params"] == graph.params and data["dynamic_batch"] is True


def test_info_loads_a_file_factory_and_weights(tmp_path: Path):
    src = tmp_path / "mynet.py"
    src.write_text("import torch.nn as nn\n"
                   "def make(width=4):\n"
                   "    return nn.Sequential(nn.Conv2d(3, width, 3), nn.Tanh())\n")
    model = torch.nn.Sequential(torch.nn.Conv2d(3, 6, 3), torch.nn.Tanh())
    ckpt = tmp_path / "w.pt"
    torch.save({"state_dict": model.state_dict()}, ckpt)
    result = runner.invoke(app, ["info", f"{src}:make", "--arg", "width=6", "--weights", str(ckpt),
                                 "--input-shape", "1,3,10,10", "--json"])
    assert result.exit_code == 0, result.output
    assert json.loads(result.output)["macs"] == 6 * 8 * 8 * 3 * 9


def test_info_errors_say_what_is_wrong():
    cases = [
        (["info", "no_such_module:f", "--input-shape", "1,3,8,8"], "cannot import"),
        (["info", "gcc_gan.zoo", "--input-shape", "1,3,8,8"], "MODULE:FACTORY"),
        (["info", "gcc_gan.zoo:nope", "--input-shape", "1,3,8,8"], "has no attribute 'nope'"),
        (["info", "gcc_gan.zoo:resnet_generator", "--input-shape", "1,3,a"], "comma-separated"),
        (["info", "gcc_gan.zoo:resnet_generator", "--arg", "ngf", "--input-shape", "1,3,8,8"],
         "key=value"),
    ]
    for args, message in cases:
        result = runner.invoke(app, args)
        assert result.exit_code == 2, args
        assert message in result.output, (args, result.output)


def test_zoo_lists_every_model():
    result = runner.invoke(app, ["zoo"])
    assert result.exit_code == 0, result.output
    for name in zoo.ZOO:
        assert name in result.output


def test_example_script_runs(capsys):
    runpy.run_path(str(Path(__file__).parents[1] / "examples" / "inspect_generator.py"),
                   run_name="__main__")
    out = capsys.readouterr().out
    assert "real MACs" in out and "max |graph - eager| at batch 4: 0.0" in out


def test_info_channels_lists_groups():
    result = runner.invoke(app, ["info", "gcc_gan.zoo:resnet_generator", *TINY, "--channels"])
    assert result.exit_code == 0, result.output
    assert "channel groups" in result.output
    # stem, first downsampler, the residual stream (second downsampler and the block outputs),
    # the block interior, two upsamplers
    assert "prunable channel units in 6 groups" in result.output


def test_compile_writes_the_artifact_directory(tmp_path: Path):
    src = tmp_path / "gen.py"
    src.write_text("import torch.nn as nn\n"
                   "def make(width=8):\n"
                   "    return nn.Sequential(nn.Conv2d(3, width, 3, padding=1), nn.BatchNorm2d(width),\n"
                   "                         nn.ReLU(), nn.Conv2d(width, 3, 3, padding=1), nn.Tanh())\n")
    out = tmp_path / "build"
    result = runner.invoke(app, ["compile", f"{src}:make", "--input-shape", "1,3,16,16",
                                 "--ratio", "0.5", "--round-to", "1", "--out", str(out),
                                 "--no-measure"])
    assert result.exit_code == 0, result.output
    assert {"model.onnx", "model.pt2", "example_inputs.pt", "report.json", "report.md"} <= \
        {p.name for p in out.iterdir()}
    report = json.loads((out / "report.json").read_text())
    assert report["macs_after"] <= 0.5 * report["macs_before"]
    assert [p["name"] for p in report["passes"]] == ["fold_norms", "deconv_to_subpixel",
                                                      "split_taps", "prune_channels",
                                                      "quantize_int8"]


def test_compile_errors_are_one_line_and_exit_2(tmp_path: Path):
    result = runner.invoke(app, ["compile", "gcc_gan.zoo:resnet_generator", "--arg", "ngf=8",
                                 "--input-shape", "1,3,32,32", "--budget-macs", "100",
                                 "--out", str(tmp_path), "--no-measure"])
    assert result.exit_code == 2
    assert "smallest reachable" in result.output


def test_targets_lists_x86():
    result = runner.invoke(app, ["targets"])
    assert result.exit_code == 0 and "x86" in result.output and "quantize_int8" in result.output
    assert "16 (narrow: x4)" in result.output
