"""Make a generator run within a latency budget on this machine (x86, ONNX Runtime).

    python examples/latency_budget.py --budget-ms 20

Run `gcc-gan tune --target x86` once first: the search then starts from measured kernel costs
and usually needs one or two measured rounds.
"""

import argparse

import torch

import gcc_gan
from gcc_gan import zoo

parser = argparse.ArgumentParser()
parser.add_argument("--budget-ms", type=float, default=20.0)
args = parser.parse_args()

gen = zoo.resnet_generator(ngf=64, n_blocks=9)      # load your trained weights here
x = torch.randn(1, 3, 256, 256)
out = gcc_gan.compile(gen, target="x86", budget_latency_ms=args.budget_ms, example_inputs=(x,),
                      calib_data=[(torch.randn(1, 3, 256, 256),) for _ in range(4)])
for r in out.report.latency_search["rounds"]:
    print(f"round {r['round']}: {r['macs'] / 1e9:.2f}G MACs, predicted {r['corrected_ms']:.1f} ms, "
          f"measured {r['measured_ms']:.1f} ms")
print(f"kept {out.report.macs_after / 1e9:.2f}G MACs: {out.report.latency_after['median_ms']:.1f} ms")
