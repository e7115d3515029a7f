"""TVM lowering: host builds match torch (zoo models, after our passes), aarch64 cross builds
export an aarch64 ELF library, and an op TVM cannot import is named with its node.

Skipped without apache-tvm (`pip install 'gcc-gan[tvm]'`); the cross build also needs
aarch64-linux-gnu-gcc (Debian/Ubuntu: `apt-get install gcc-aarch64-linux-gnu`).
"""

import shutil

import pytest
import torch
from torch import nn

pytest.importorskip("tvm", reason="apache-tvm is not installed: pip install 'gcc-gan[tvm]'")

from gcc_gan import PruneConfig, prune_channels, trace, zoo
from gcc_gan.lower import LoweringError, TvmModel, lower_tvm
from gcc_gan.lower.tvm import host_target
from gcc_gan.passes.deconv_to_subpixel import deconv_to_subpixel

AARCH64 = {"kind": "llvm", "mtriple": "aarch64-linux-gnu", "mattr": ["+neon"]}
EM_AARCH64 = 0xB7
needs_cross_gcc = pytest.mark.skipif(shutil.which("aarch64-linux-gnu-gcc") is None,
                                     reason="aarch64-linux-gnu-gcc is not installed "
                                            "(apt-get install gcc-aarch64-linux-gnu)")


def _close(model: TvmModel, graph, inputs) -> float:
    with torch.no_grad():
        return (model.run(*inputs) - graph(*inputs)).abs().max().item()


@pytest.fixture(scope="module")
def graphs():
    """Tiny zoo generators (ngf 8, 32 px), traced at batch 2 so parity covers batch > 1."""
    return {name: trace(zoo.build(name), zoo.example_inputs(name, batch=2))
            for name in ("resnet", "unet")}


@pytest.fixture(scope="module")
def host_models(graphs):
    return {name: lower_tvm(graph) for name, graph in graphs.items()}


@pytest.mark.parametrize("name", ["resnet", "unet"])
def test_host_build_matches_torch_at_any_batch(name, graphs, host_models):
    graph, model = graphs[name], host_models[name]
    assert model.target == host_target() and not model.cross
    assert model.input_shapes == ((1, 3, 32, 32),)
    assert model.parity_max_abs_diff is not None and model.parity_max_abs_diff <= 1e-4
    assert "static shapes at batch 1" in model.notes[0]
    x = zoo.example_inputs(name, batch=3, seed=7)
    assert _close(model, graph, x) <= 1e-4


def test_graph_after_prune_and_subpixel_passes_lowers(graphs):
    pruned = prune_channels(graphs["resnet"], config=PruneConfig(ratio=0.5)).graph
    rewritten = deconv_to_subpixel(pruned).graph
    ops = {str(n.target) for n in rewritten.graph.nodes}
    assert "aten.pixel_shuffle.default" in ops and "aten.conv_transpose2d.input" not in ops
    assert rewritten.macs < graphs["resnet"].macs
    model = lower_tvm(rewritten)
    assert model.parity_max_abs_diff <= 1e-4
    assert _close(model, rewritten, rewritten.example_inputs) <= 1e-4  # batch 2


def test_run_checks_inputs(host_models):
    model = host_models["resnet"]
    with pytest.raises(ValueError, match="takes 1 tensor inputs"):
        model.run(torch.randn(1, 3, 32, 32), torch.randn(1, 3, 32, 32))
    with pytest.raises(ValueError, match=r"built for \(1, 3, 32, 32\)"):
        model.run(torch.randn(1, 3, 64, 64))


@needs_cross_gcc
def test_aarch64_build_exports_an_aarch64_shared_library(tmp_path, graphs):
    graph = graphs["unet"]
    model = lower_tvm(graph, AARCH64)
    assert model.cross and model.target == AARCH64
    assert model.parity_max_abs_diff is None
    assert any("parity not checked here: built for aarch64" in n for n in model.notes)
    path = model.export_library(tmp_path / "unet.so")
    header = path.read_bytes()[:20]
    assert header[:4] == b"\x7fELF" and header[4] == 2          # 64-bit ELF
    assert header[16] == 3                                     # ET_DYN: a shared library
    assert int.from_bytes(header[18:20], "little") == EM_AARCH64
    with pytest.raises(RuntimeError, match="built for aarch64.*tvm-rpc"):
        model.run(*graph.example_inputs)


class _Lgamma(nn.Module):
    def __init__(self):
        super().__init__()
        self.conv = nn.Conv2d(3, 4, 3, padding=1)

    def forward(self, x):
        return torch.lgamma(self.conv(x))


def test_unsupported_op_names_op_node_and_source_line():
    graph = trace(_Lgamma().eval(), (torch.randn(1, 3, 8, 8),))
    with pytest.raises(LoweringError, match=r"no rule for lgamma\.default in _Lgamma: node "
                                            r"lgamma .*test_tvm\.py:\d+ in forward"):
        lower_tvm(graph)


def test_non_cpu_target_is_refused():
    graph = trace(_Lgamma().eval(), (torch.randn(1, 3, 8, 8),))
    with pytest.raises(LoweringError, match="CPU .kind 'llvm'. targets only"):
        lower_tvm(graph, {"kind": "cuda"})
