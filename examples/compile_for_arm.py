"""Compile a CycleGAN generator for a phone CPU (arm): int8 ONNX + an aarch64 TVM library.

    python examples/compile_for_arm.py [--rpc HOST:PORT:KEY]

Without a board the latency is the arm cost model's prediction (the report says so); with a
TVM RPC tracker and a board registered under KEY, the latency budget is measured there.
"""

import argparse

import torch

import gcc_gan
from gcc_gan import targets, zoo
from gcc_gan.backends import get_backend

parser = argparse.ArgumentParser()
parser.add_argument("--rpc", help="HOST:PORT:KEY of a TVM RPC tracker and the board's key")
parser.add_argument("--budget-ms", type=float, default=60.0)
args = parser.parse_args()

gen = zoo.resnet_generator(ngf=64, n_blocks=9)      # load your trained weights here
x = torch.randn(1, 3, 256, 256)
calib = [(torch.randn(1, 3, 256, 256),) for _ in range(4)]   # use real images
backend = None
if args.rpc:
    host, port, key = args.rpc.split(":")
    backend = get_backend("tvm-rpc", tracker_host=host, tracker_port=int(port), key=key,
                          target=dict(targets.get("arm").tvm_target))
out = gcc_gan.compile(gen, target="arm", budget_latency_ms=args.budget_ms, example_inputs=(x,),
                      calib_data=calib, backend=backend, output_dir="build/arm")
print(out.report.to_markdown())
print("wrote build/arm/: model.onnx (int8), model_arm.so (aarch64), report.md")
