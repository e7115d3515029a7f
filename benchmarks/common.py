"""What several benchmarks share: the ResNet-9 workload and the thread option."""

from __future__ import annotations

import argparse

import torch

from gcc_gan import zoo


def resnet9_workload(calib_batches: int = 4):
    """ResNet-9 (ngf 64) with a seeded 256x256 input and seeded random calibration batches
    (no trained weights or data exist for it here)."""
    model = zoo.build("resnet", "standard")
    x = torch.randn(1, 3, 256, 256, generator=torch.Generator().manual_seed(1))
    calib = [(torch.randn(1, 3, 256, 256, generator=torch.Generator().manual_seed(s)),)
             for s in range(calib_batches)]
    return model, x, calib


def parse_threads(parser: argparse.ArgumentParser | None = None) -> argparse.Namespace:
    """Parse the command line with a --threads option, and apply it."""
    parser = parser or argparse.ArgumentParser()
    parser.add_argument("--threads", type=int, help="torch/ONNX Runtime threads (default: all)")
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    return args
