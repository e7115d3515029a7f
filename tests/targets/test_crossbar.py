"""The ReRAM crossbar model against hand-computed figures, and the reram compile report."""

import math

import pytest
import torch
from torch import nn

import gcc_gan
from gcc_gan import targets, trace, zoo
from gcc_gan.targets.crossbar import estimate

RERAM = targets.get("reram")
XB = RERAM.crossbar


def conv_report(bits=None, module=None, shape=(1, 16, 8, 8)):
    graph = trace(module or nn.Conv2d(16, 32, 3, padding=1), (torch.randn(*shape),))
    node = next(n.name for n in graph.cost.nodes if n.macs)
    return estimate(graph, RERAM, {node: bits} if bits else None).layers[0]


def test_an_8_bit_conv_by_hand():
    layer = conv_report()
    # rows: 16*9 = 144 -> 2 tiles; columns: 32 outputs * 8 bit slices = 256 -> 2 tiles
    assert layer.crossbars == 4 and layer.bits == 8
    assert layer.cycles == 64 * 8                        # 8x8 pixels, 8 input bits
    assert layer.adc_conversions == 512 * 2 * 256         # every read digitises used columns
    per_read = max(XB["read_ns"] * 1e-9, 128 / XB["adc_samples_per_s"])
    assert layer.seconds == pytest.approx(512 * per_read)
    energy = (layer.adc_conversions * XB["adc_power_w"] / XB["adc_samples_per_s"]
              + 512 * 4 * XB["read_energy_pj"] * 1e-12)
    assert layer.energy_j == pytest.approx(energy)
    assert layer.utilization == pytest.approx(144 * 256 / (4 * 128 * 128))


def test_binarized_weights_need_an_eighth_of_the_columns():
    layer = conv_report(bits=1)
    assert layer.crossbars == 2 and layer.adc_conversions == 512 * 2 * 32
    assert layer.seconds < conv_report().seconds


def test_a_transposed_conv_maps_in_scatter_form():
    layer = conv_report(module=nn.ConvTranspose2d(16, 8, 4, 2, 1), shape=(1, 16, 8, 8))
    # each of 64 input pixels: 16 rows, 8 * 16 kernel positions * 8 bits = 1024 columns
    assert layer.crossbars == 1 * math.ceil(1024 / 128) and layer.cycles == 64 * 8


def test_reram_compile_reports_crossbars_cycles_and_energy_per_layer():
    out = gcc_gan.compile(zoo.build("resnet"), "reram", ratio=0.5,
                          example_inputs=zoo.example_inputs("resnet"), measure=False)
    c = out.report.cost_model
    assert c["model"] == "crossbar" and c["crossbars"] > 0 and c["energy_mj"] > 0
    layers = c["layers"]
    assert len(layers) == sum(1 for n in out.graph.cost.nodes if n.macs)
    assert {"crossbars", "cycles", "energy_j", "adc_conversions", "bits"} <= set(layers[0])
    assert out.report.latency_after is None
    assert any("predicted by its cost model" in n for n in out.report.notes)
    md = out.report.to_markdown()
    assert "Crossbars:" in md and "| layer | module | bits | crossbars |" in md
