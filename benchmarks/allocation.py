"""Which channels a pruned generator keeps: one global threshold on unit importance, and how
a unit's values over the tensors it indexes are combined.

Run: `.venv/bin/python benchmarks/allocation.py` after `make teachers`. Writes
benchmarks/results/allocation.json.

A residual trunk's channel unit indexes ~2 tensors per block, a block interior's 2, an encoder
or decoder layer's 2-3. Three importances are compared:
- `sum` (the pass's default until 2026-12): normalized slice norms (or |gamma|) summed over the
  tensors a unit indexes, so a trunk unit scores ~n_blocks times an interior one;
- `mean` (the default since): the same values averaged;
- `layer-uniform`: ranks within each group (the same fraction of every layer removed).

Quality, on trained teachers (`make teachers`), each pruned with each importance, PSNR on the
held-out photographs without fine-tuning and after `--finetune-steps` of the product's
fine-tuning (`gcc_gan.train.distill`: CAT's KA + L1 to the ground truth; the same settings for
every student):
- the denoising ResNet (CycleGAN's ResnetGenerator, ngf 16, 6 blocks, global skip; Gaussian
  noise sigma 0.1) at 1/4 and 1/10 of its MACs;
- the x4 SR RRDB (ESRGAN's RRDBNet under a bicubic skip) at 1/4;
- the digits DCGAN at 70/50/30% of its MACs without fine-tuning: FID-digits (features of the
  digits classifier, 1797 samples), and whether `sum` and `mean` keep the same channels (its
  units all index as many tensors).
Latency: the int8 program `compile(resnet9, "x86", budget_macs=3e9)` builds with each importance
(ResNet-9 ngf 64, 256x256, random weights: its widths follow the weights' norms, not training),
timed in turns in ONNX Runtime.
"""

from __future__ import annotations

import os

os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")  # see teachers.py

import argparse
import dataclasses
import json
import warnings
from functools import partial
from pathlib import Path

import torch
from rich.console import Console
from rich.table import Table

import gcc_gan
from common import resnet9_workload
from gcc_gan import trace, zoo
from gcc_gan.channels.importance import default_importance, layer_uniform
from gcc_gan.measure import environment, time_side_by_side
from gcc_gan.passes.channel_prune import PruneConfig, prune_channels
from gcc_gan.train.distill import DistillConfig, distill
from gcc_gan.train.fid import DigitsClassifier, digits_scores
from gcc_gan.train.gan import sample
from gcc_gan.train.tasks import (SR_HELD_OUT, BicubicResidual, GlobalResidual, NoisyPatches,
                                 SRConfig, SRPatches, any_size, digits, noisy_pairs,
                                 sr_metrics, sr_pairs)

HERE = Path(__file__).parent
TEACHERS = HERE / "teachers"
RESULTS = HERE / "results" / "allocation.json"
IMPORTANCES = {"sum": partial(default_importance, combine="sum"),
               "mean": partial(default_importance, combine="mean"),
               "layer-uniform": layer_uniform}


def _teacher(name: str) -> dict:
    path = TEACHERS / name
    if not path.exists():
        raise SystemExit(f"{path} is missing: train the teachers first (`make teachers`, or "
                         "`.venv/bin/python benchmarks/teachers.py --only resnet|sr|digits`)")
    return torch.load(path, weights_only=False)


def _short(groups: list[dict]) -> str:
    """Kept channels per group, in order; a ResnetGenerator's trunk (the last encoder conv's
    group) and block interiors by name."""
    trunk = [g["after"] for g in groups if g["module"].endswith("encoder.7")]
    inner = [g["after"] for g in groups if ".conv_block." in g["module"]]
    if trunk and inner:
        return f"trunk {trunk[0]}, block interiors {min(inner)}-{max(inner)}"
    return "widths " + "/".join(str(g["after"]) for g in groups)


def _student_rows(args, console, task: str, graph, score, data, ratios) -> list[dict]:
    rows = []
    for ratio in ratios:
        for name in args.importances:
            result = prune_channels(graph, config=PruneConfig(ratio=ratio,
                                                              importance=IMPORTANCES[name]))
            pruned = result.graph
            groups = [dataclasses.asdict(g) for g in result.report.groups]
            row = {"task": task, "model": f"1/{round(1 / ratio)} MACs", "importance": name,
                   "ratio": ratio, "macs_ratio": pruned.macs / graph.macs, "groups": groups,
                   "psnr_no_finetune": score(pruned.module)}
            out = distill(pruned, graph, data(), DistillConfig(steps=args.finetune_steps,
                                                               lr=args.lr, seed=1))
            row["psnr"] = score(out.module)
            row["finetune_seconds"] = out.history.seconds
            rows.append(row)
            console.print(f"  ({task}) {row['model']}, {name}: {row['psnr_no_finetune']:.2f} -> "
                          f"{row['psnr']:.2f} dB ({_short(groups)})")
    return rows


def _reference(console, task: str, name: str, psnr: float, **extra) -> dict:
    console.print(f"  ({task}) {name}: {psnr:.2f} dB")
    return {"task": task, "model": name, "psnr": psnr, **extra}


def denoising(args, console: Console) -> list[dict]:
    blob = _teacher("denoise_resnet.pt")
    sigma = blob["train"]["sigma"]
    teacher = GlobalResidual(zoo.resnet_generator(**blob["config"]))
    teacher.load_state_dict(blob["state_dict"])
    graph = trace(teacher.eval(), (torch.rand(1, 3, args.patch, args.patch),))
    held_out = noisy_pairs(SR_HELD_OUT, sigma)

    def score(module) -> float:
        return sr_metrics(module, held_out, scale=1)["psnr"]

    def data():
        return NoisyPatches(SRConfig(scale=1, patch=args.patch, batch=args.batch, seed=1), sigma)

    return [_reference(console, "denoise", "noisy input", score(torch.nn.Identity())),
            _reference(console, "denoise", "teacher", score(graph.module), macs_ratio=1.0),
            *_student_rows(args, console, "denoise", graph, score, data, args.ratios)]


def super_resolution(args, console: Console) -> list[dict]:
    blob = _teacher("sr_rrdb.pt")
    scale = blob["config"]["scale"]
    teacher = BicubicResidual(zoo.rrdb_generator(**blob["config"]), scale)
    teacher.load_state_dict(blob["state_dict"])
    graph = trace(teacher.eval(), (torch.rand(1, 3, args.patch // scale, args.patch // scale),))
    held_out = sr_pairs(SR_HELD_OUT, scale)

    def score(module) -> float:
        return sr_metrics(module, held_out, scale)["psnr"]

    def data():
        return SRPatches(SRConfig(scale=scale, patch=args.patch, batch=args.batch, seed=1))

    bicubic = torch.nn.Upsample(scale_factor=scale, mode="bicubic")
    return [_reference(console, "sr", "bicubic", score(bicubic)),
            _reference(console, "sr", "teacher", score(graph.module), macs_ratio=1.0),
            *_student_rows(args, console, "sr", graph, score, data, [0.25])]


def digits_dcgan(console: Console) -> dict:
    """FID-digits of the trained DCGAN pruned (no fine-tuning) with each importance, and
    whether sum and mean keep the same channels (its units all index as many tensors)."""
    blob, clf_blob = _teacher("digits_dcgan.pt"), _teacher("digits_classifier.pt")
    classifier = DigitsClassifier(clf_blob["size"])
    classifier.load_state_dict(clf_blob["state_dict"])
    config = blob["config"]
    real, _ = digits(config["img_size"])
    gen = zoo.dcgan_generator(**config)
    gen.load_state_dict(blob["state_dict"])
    graph = trace(gen.eval(), (torch.randn(2, config["nz"], 1, 1),))

    def fid(module) -> float:
        with torch.no_grad():
            images = sample(any_size(module), len(real), config["nz"])
            return digits_scores(classifier, images, real)["fid"]

    rows = [{"model": "teacher", "fid": fid(graph.module)}]
    console.print(f"  (digits DCGAN) teacher: FID-digits {rows[0]['fid']:.2f}")
    for ratio in (0.7, 0.5, 0.3):
        pruned = {n: prune_channels(graph, config=PruneConfig(ratio=ratio,
                                                              importance=IMPORTANCES[n]))
                  for n in IMPORTANCES}
        row = {"model": f"{ratio:.0%} MACs", "ratio": ratio,
               "sum_and_mean_agree": bool((pruned["sum"].decision.keep
                                           == pruned["mean"].decision.keep).all()),
               **{f"fid_{n}": fid(r.graph.module) for n, r in pruned.items()}}
        rows.append(row)
        console.print(f"  (digits DCGAN) {row['model']}: FID-digits "
                      + ", ".join(f"{n} {row['fid_' + n]:.2f}" for n in IMPORTANCES)
                      + f"; sum and mean keep the same channels: {row['sum_and_mean_agree']}")
    return {"samples": len(real), "rows": rows}


def latency(args, console: Console) -> list[dict]:
    model, x, calib = resnet9_workload()
    programs, rows = {}, []
    for name in args.importances:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            out = gcc_gan.compile(model, "x86", budget_macs=args.budget_macs, example_inputs=(x,),
                                  calib_data=calib, measure=False,
                                  configs={"prune_channels": PruneConfig(
                                      budget_macs=args.budget_macs,
                                      importance=IMPORTANCES[name])})
        prune = next(p for p in out.report.passes if p.name == "prune_channels")
        programs[name] = out
        rows.append({"importance": name, "macs": out.report.macs_after,
                     "int8_layers": out.report.lowering["int8_layers"],
                     "groups": prune.details["groups"]})
        console.print(f"  compiled with {name}: {_short(rows[-1]['groups'])}")
    timed = time_side_by_side({n: (partial(p.run, x), 1) for n, p in programs.items()},
                              rounds=args.rounds, threads=torch.get_num_threads(),
                              backends={n: "onnxruntime" for n in programs})
    for row in rows:
        row["int8_ms"] = timed[row["importance"]].median_ms
    return rows


def _print_tables(record: dict, console: Console) -> None:
    if "quality" in record:
        table = Table(title="Pruned with each importance: PSNR dB on the held-out photographs",
                      header_style="bold")
        for col in ("task", "model", "importance", "kept channels", "no fine-tuning",
                    "fine-tuned"):
            table.add_column(col, justify="right")
        for r in record["quality"]:
            tuned = "psnr_no_finetune" in r
            table.add_row(r["task"], r["model"], r.get("importance", "-"),
                          _short(r["groups"]) if tuned else "-",
                          f"{r['psnr_no_finetune']:.2f}" if tuned else "-", f"{r['psnr']:.2f}")
        console.print(table)
    if "latency" in record:
        budget = record["args"]["budget_macs"]
        table = Table(title=f"compile(resnet9, 'x86', budget_macs={budget:.0e}): ONNX Runtime "
                            "int8, in turns", header_style="bold")
        for col in ("importance", "GMACs", "kept channels", "int8 convs", "ms"):
            table.add_column(col, justify="right")
        for r in record["latency"]:
            table.add_row(r["importance"], f"{r['macs'] / 1e9:.2f}", _short(r["groups"]),
                          str(r["int8_layers"]), f"{r['int8_ms']:.1f}")
        console.print(table)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--ratios", type=float, nargs="+", default=[1 / 4, 1 / 10],
                        help="MACs ratios of the denoising students (the SR ones: 1/4)")
    parser.add_argument("--finetune-steps", type=int, default=300)
    parser.add_argument("--lr", type=float, default=5e-4)
    parser.add_argument("--patch", type=int, default=64)
    parser.add_argument("--batch", type=int, default=16)
    parser.add_argument("--budget-macs", type=float, default=3e9)
    parser.add_argument("--rounds", type=int, default=10)
    parser.add_argument("--tasks", nargs="*", default=["denoise", "sr", "dcgan"],
                        choices=["denoise", "sr", "dcgan"], help="quality tasks to run")
    parser.add_argument("--importances", nargs="*", default=list(IMPORTANCES),
                        choices=list(IMPORTANCES))
    parser.add_argument("--out", type=Path, default=RESULTS)
    parser.add_argument("--skip-latency", action="store_true")
    parser.add_argument("--threads", type=int, default=2)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    console = Console(width=160)
    record = {"environment": environment(), "threads": args.threads,
              "args": {**vars(args), "out": str(args.out)}}
    args.out.parent.mkdir(parents=True, exist_ok=True)

    def save():  # after every task: a late failure keeps what was measured
        args.out.write_text(json.dumps(record, indent=2))

    tasks = {"denoise": denoising, "sr": super_resolution}
    for task in args.tasks:
        if task == "dcgan":
            record["digits_dcgan"] = digits_dcgan(console)
        else:
            record.setdefault("quality", []).extend(tasks[task](args, console))
        save()
    if not args.skip_latency:
        record["latency"] = latency(args, console)
        save()
    _print_tables(record, console)
    console.print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
