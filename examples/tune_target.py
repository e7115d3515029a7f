"""Tune a target's cost model on your device: copy this for a new board.

    python examples/tune_target.py                       # this machine (x86, ONNX Runtime)
    python examples/tune_target.py --target arm --rpc 192.168.1.20:9190:pixel7

For a board: start a tracker on this machine (`python -m tvm.exec.rpc_tracker --port 9190`)
and on the board `python -m tvm.exec.rpc_server --tracker HOST:9190 --key pixel7`. A new board
is a new profile: copy targets/arm.toml, edit the datasheet figures and `tvm_target`, and
register it (below) before tuning. The fit is saved under ~/.cache/gcc-gan/tuned/ (or
$GCC_GAN_HOME) where `gcc_gan.compile(..., target=NAME)` picks it up.
"""

import argparse
from pathlib import Path

from gcc_gan import targets
from gcc_gan.tune import rpc_measure, tune

parser = argparse.ArgumentParser()
parser.add_argument("--target", default="x86")
parser.add_argument("--profile", type=Path, help="a TOML profile of a new board to register")
parser.add_argument("--rpc", help="HOST:PORT:KEY of a TVM RPC tracker and the board's key")
parser.add_argument("--quick", action="store_true", help="a few probes per kernel kind")
args = parser.parse_args()

if args.profile:
    targets.register(targets.Target.from_toml(args.profile.read_text(), str(args.profile)))
profile = targets.get(args.target, tuned=False)
measure = rpc_measure(profile, args.rpc) if args.rpc else None
result = tune(profile, measure=measure, size="quick" if args.quick else "full")
for kind, fit in sorted(result.kernels.items()):
    error = "" if fit.median_rel_error is None else f", median error {fit.median_rel_error:.1%}"
    print(f"{kind:22s} {fit.samples:3d} probes{error}")
print(f"saved {result.path}")
