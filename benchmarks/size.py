"""Size passes on ResNet-9 (ngf 64, 9 blocks, 256x256): bytes and fidelity of each storage form.

Run: `make bench` (or `.venv/bin/python benchmarks/size.py`). Variants: fp32, int8 (quantize_int8
lowered as QDQ ONNX), k-means 8 and 4 bits (share_weights_kmeans, per layer, linear init), and
ERK sparsity 70% / 80% followed by k-means 4 bits. For each: the packed bytes of its storage
form (`gcc_gan.size`), the bytes of its ONNX file (LUT form for k-means), the bytes of the
Huffman-coded artifact (`gcc_gan.encode`, checked to decode bit for bit), and the PSNR of its
output against the original on one 256x256 input. k-means time is the clustering alone
(`kmeans_seconds`, goal <= 2 s at 8 bits) and the whole pass (copy + re-export).

The weights are random (seeded): no trained GAN weights can be downloaded here. PSNR therefore
measures how far each storage form moves a random-weight generator's output, not image quality.
Writes benchmarks/results/size.json.
"""

from __future__ import annotations

import json
import time
import warnings
from pathlib import Path

import numpy as np
import torch
from rich.console import Console
from rich.table import Table

from gcc_gan import trace
from gcc_gan.encode import decode_bytes, encode_bytes
from gcc_gan.lower import lower_onnx
from gcc_gan.metrics import psnr
from gcc_gan.passes.kmeans_share import KmeansConfig, share_weights_kmeans
from gcc_gan.passes.quantize import quantize_int8
from gcc_gan.passes.sparsify import SparsifyConfig, sparsify
from gcc_gan.size import size_table
from gcc_gan.zoo import resnet_generator

RESULTS = Path(__file__).parent / "results" / "size.json"
NOTE = ("random (seeded) weights: no trained GAN weights are available here, so PSNR is the "
        "output change of a random-weight generator, not image quality")


def _out(y):
    return y if isinstance(y, torch.Tensor) else y[0]


def _jsonable(row: dict) -> dict:
    """inf PSNR (identical output) as null: JSON has no infinity."""
    return {k: None if isinstance(v, float) and np.isinf(v) else v for k, v in row.items()}


def _exact_round_trip(graph, data: bytes) -> float:
    start = time.perf_counter()
    loaded = decode_bytes(data)
    seconds = time.perf_counter() - start
    for name, t in graph.module.state_dict().items():
        if not np.array_equal(loaded.tensors[name].view(np.uint8), t.numpy().view(np.uint8)):
            raise AssertionError(f"{name} does not decode exactly")
    return seconds


def measure(name: str, graph, storage_row: str, x, reference, *, onnx=None, kmeans=None) -> dict:
    lowered = onnx or lower_onnx(graph, threads=torch.get_num_threads())
    with torch.no_grad():
        torch_out = _out(graph(x))
    row = {"variant": name, "storage": storage_row,
           "packed_bytes": next(r.bytes for r in size_table(graph, encode=False).rows
                                if r.name.startswith(storage_row)),
           "onnx_bytes": len(lowered.data),
           "psnr_db": psnr(_out(lowered.run(x)), reference) if lowered.int8_layers
           else psnr(torch_out, reference)}
    if not lowered.int8_layers:
        start = time.perf_counter()
        data = encode_bytes(graph)
        row.update(encoded_bytes=len(data), encode_s=time.perf_counter() - start,
                   decode_s=_exact_round_trip(graph, data),
                   onnx_vs_torch_max_abs=float((_out(lowered.run(x)) - torch_out).abs().max()))
    if kmeans is not None:
        row.update(kmeans_s=kmeans[0].kmeans_seconds, pass_s=kmeans[1],
                   iterations_max=max(layer["iterations"] for layer in kmeans[0].layers),
                   converged_layers=sum(layer["converged"] for layer in kmeans[0].layers),
                   layers=len(kmeans[0].layers))
    return row


def shared(graph, bits: int):
    start = time.perf_counter()
    result = share_weights_kmeans(graph, config=KmeansConfig(bits=bits))
    return result.graph, (result.report, time.perf_counter() - start)


def main() -> None:
    warnings.simplefilter("ignore")
    console = Console(width=170)
    torch.manual_seed(0)
    model = resnet_generator(ngf=64, n_blocks=9).eval()
    gen = torch.Generator().manual_seed(1)
    x = torch.randn(1, 3, 256, 256, generator=gen)
    calib = [(torch.randn(1, 3, 256, 256, generator=gen),) for _ in range(2)]
    graph = trace(model, (x,))
    with torch.no_grad():
        reference = _out(graph(x))
    rows = []
    with console.status("measuring storage forms ...") as status:
        rows.append(measure("fp32", graph, "fp32", x, reference))
        status.update("int8 (QDQ) ...")
        int8 = lower_onnx(quantize_int8(graph, calib_data=calib).graph, calib=calib,
                          threads=torch.get_num_threads())
        rows.append(measure("int8 (QDQ ONNX)", graph, "int8", x, reference, onnx=int8))
        for bits in (8, 4):
            status.update(f"k-means {bits}-bit ...")
            g, km = shared(graph, bits)
            rows.append(measure(f"k-means {bits}-bit", g, "k-means", x, reference, kmeans=km))
        for sparsity in (0.7, 0.8):
            status.update(f"ERK {sparsity:.0%} + k-means 4-bit ...")
            sparse = sparsify(graph, config=SparsifyConfig(sparsity=sparsity)).graph
            g, km = shared(sparse, 4)
            rows.append(measure(f"ERK {sparsity:.0%} + k-means 4-bit", g, "+sparsity", x,
                                reference, kmeans=km))

    fp32 = rows[0]["packed_bytes"]
    table = Table(title="ResNet-9 (ngf 64, 256x256) storage: bytes and output PSNR vs fp32",
                  caption=NOTE, caption_justify="left", header_style="bold")
    for col in ("variant", "packed bytes", "ONNX bytes", "encoded bytes", "encoded vs fp32",
                "PSNR", "k-means s", "pass s"):
        table.add_column(col, justify="left" if col == "variant" else "right")
    for r in rows:
        enc = r.get("encoded_bytes")
        table.add_row(r["variant"], f"{r['packed_bytes']:,}", f"{r['onnx_bytes']:,}",
                      "-" if enc is None else f"{enc:,}",
                      "-" if enc is None else f"{fp32 / enc:.1f}x",
                      "inf" if np.isinf(r["psnr_db"]) else f"{r['psnr_db']:.1f} dB",
                      f"{r['kmeans_s']:.2f}" if "kmeans_s" in r else "-",
                      f"{r['pass_s']:.1f}" if "pass_s" in r else "-")
    console.print(table)
    console.print("int8 is not entropy-coded: its plan lives in the QDQ ONNX file only. Packed "
                  "bytes: indices at b bits, 1-bit masks, float32 codebooks and the tensors the "
                  "passes leave in float32. The LUT ONNX stores an index for every weight, pruned "
                  "or not, so sparsity shrinks the encoded artifact, not the ONNX file. torch's "
                  "default init draws weights uniformly, so k-means clusters of dense weights "
                  "hold near-equal counts and Huffman gains little on them.")
    RESULTS.parent.mkdir(parents=True, exist_ok=True)
    RESULTS.write_text(json.dumps({"threads": torch.get_num_threads(), "params": graph.params,
                                   "note": NOTE, "variants": [_jsonable(r) for r in rows]},
                                  indent=2))
    console.print(f"wrote {RESULTS}")


if __name__ == "__main__":
    main()
