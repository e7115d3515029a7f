"""Fidelity recovery on real data: what pruning costs and what distillation wins back.

Run: `make bench` (or `.venv/bin/python benchmarks/quality.py [--distill-steps N] ...`) after
`make teachers`. Writes benchmarks/results/quality.json. With both tasks and --threads >= 2,
the digits task runs in a second process beside super-resolution, one thread each.

Super-resolution (x4, scikit-image photographs; PSNR/SSIM against the held-out originals,
border of 4 px shaved): bicubic for context; the teacher (RRDB under a bicubic skip); the
teacher pruned by `prune_channels` to 1/4 and 1/10 of its MACs with layer-uniform importance
(`gcc_gan.channels.importance.layer_uniform`), without fine-tuning; each then fine-tuned from
its pruned weights by `gcc_gan.train.distill` with CAT's KA feature loss, with the MSE
feature loss through 1x1 adapters (the contrast CAT argues against), and with the
reconstruction loss alone (the control: what the feature term adds); the 1/4 student pruned with the pass's default importance
(no fine-tuning, and KA); and the KA 1/4 student compiled to int8 for x86 (`gcc_gan.compile`,
run in ONNX Runtime). Every fine-tuning run has the same steps, learning rate, batches and
reconstruction loss (L1 to the ground truth).

Digits (scikit-learn, 16x16): FID/KID-digits (features of the digits classifier trained by
`make teachers`) of the dense DCGAN teacher, of that teacher magnitude-pruned to the same
sparsity without retraining, of a lottery ticket found by IMP with rewinding, and of an
STU-GAN generator trained sparse from scratch; each trained for the teacher's step count from
the teacher's initialisation seed.
"""

from __future__ import annotations

import os

# Before torch starts OpenMP: on a shared machine, spinning worker threads wait out
# descheduled peers (measured here: 5 s a step instead of 0.4 s with a second busy process).
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

import argparse
import json
import multiprocessing
import shutil
import time
import warnings
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path

import numpy as np
import torch
from rich.console import Console
from rich.table import Table

import gcc_gan
from gcc_gan import trace, zoo
from gcc_gan.channels.importance import layer_uniform
from gcc_gan.measure import environment
from gcc_gan.passes.channel_prune import PruneConfig, prune_channels
from gcc_gan.train.distill import DistillConfig, distill
from gcc_gan.train.fid import DigitsClassifier, digits_scores
from gcc_gan.train.gan import Discriminator, GanConfig, GanTrainer, dcgan_init, sample
from gcc_gan.train.loop import CheckpointConfig
from gcc_gan.train.lottery import LotteryConfig, lottery
from gcc_gan.train.masks import Masks, prune_magnitude
from gcc_gan.train.sparse_train import SparseConfig, sparse_train
from gcc_gan.train.tasks import (SR_HELD_OUT, SR_TRAIN, BicubicResidual, SRConfig, SRPatches,
                                 any_size, digits, sr_metrics, sr_pairs)

HERE = Path(__file__).parent
TEACHERS = HERE / "teachers"
RESULTS = HERE / "results" / "quality.json"
WORK = HERE.parent / "build" / "quality"
GOAL_DB = 0.3  # the KA-distilled 1/4 student should be within this many dB of the teacher
REFERENCE_LR = 64  # MACs are reported for a 64x64 LR input (a 256x256 output)


def _load(name: str) -> dict:
    path = TEACHERS / name
    if not path.exists():
        raise SystemExit(f"{path} is missing: run `make teachers` first")
    return torch.load(path, weights_only=False)


def _int8(module, held_out, calib_pool, scale) -> dict:
    """PSNR/SSIM of the int8 x86 build of `module`, compiled at each photograph's size and
    calibrated on training-photo crops of that size."""
    outs, start = [], time.perf_counter()
    for lr, hr in held_out:
        h, w = lr.shape[1:]
        calib = [(c[None, :, :h, :w],) for c in calib_pool
                 if c.shape[1] >= h and c.shape[2] >= w][:4]
        built = gcc_gan.compile(any_size(module), target="x86", example_inputs=(lr[None],),
                                calib_data=calib, measure=False)
        outs.append((built, lr, hr))
    run = _OnnxRunner(outs)
    metrics = sr_metrics(run, held_out, scale)
    metrics["int8_layers"] = outs[0][0].onnx.int8_layers
    metrics["seconds"] = time.perf_counter() - start
    return metrics


class _OnnxRunner(torch.nn.Module):
    """Runs the compiled artifact made for each photograph's size."""

    def __init__(self, builds):
        super().__init__()
        self.by_size = {tuple(lr.shape[1:]): b for b, lr, _ in builds}

    def forward(self, x):
        return torch.as_tensor(self.by_size[tuple(x.shape[2:])].run(x))


LOSS_NAMES = {"ka": "KA distillation", "mse": "MSE features + 1x1 adapters",
              "none": "reconstruction only"}


def super_resolution(args, console: Console) -> dict:
    blob = _load("sr_rrdb.pt")
    config, scale = blob["config"], blob["config"]["scale"]
    teacher = BicubicResidual(zoo.rrdb_generator(**config), scale)
    teacher.load_state_dict(blob["state_dict"])
    teacher.eval()
    held_out = sr_pairs(SR_HELD_OUT, scale)
    lr_patch = args.patch // scale
    graph = trace(teacher, (torch.rand(1, 3, lr_patch, lr_patch),))
    per_reference = (REFERENCE_LR / lr_patch) ** 2  # MACs grow with pixels: all ops are per-pixel
    rows, students = [], {}

    def add(name, module, macs, **extra):
        start = time.perf_counter()
        m = sr_metrics(module, held_out, scale)
        rows.append({"model": name,
                     "gmacs_64x64_lr": None if macs is None else macs * per_reference / 1e9,
                     "macs_ratio": None if macs is None else macs / graph.macs, "psnr": m["psnr"], "ssim": m["ssim"],
                     "psnr_per_image": [p["psnr"] for p in m["per_image"]],
                     "eval_seconds": time.perf_counter() - start, **extra})
        console.print(f"  [sr] {name}: {m['psnr']:.2f} dB, SSIM {m['ssim']:.4f}")

    def student(ratio, importance, losses):
        label = f"1/{round(1 / ratio)} MACs" + ("" if importance == "layer-uniform"
                                                   else f" ({importance} importance)")
        prune = PruneConfig(ratio=ratio,
                            importance=layer_uniform if importance == "layer-uniform" else None)
        result = prune_channels(graph, config=prune)
        pruned, keys = result.graph, dict(ratio=ratio, importance=importance)
        widths = {g.module: g.after for g in result.report.groups}
        add(f"{label}, no fine-tuning", pruned.module, pruned.macs, **keys, widths=widths)
        for loss in losses:
            data = SRPatches(SRConfig(scale=scale, patch=args.patch, batch=args.batch, seed=1))
            run = WORK / f"distill_{ratio}_{importance}_{loss}"
            cfg = DistillConfig(steps=args.distill_steps, lr=args.lr, feature_loss=loss,
                                feature_weight=args.feature_weight, seed=1,
                                checkpoint=CheckpointConfig(run, every=100))
            out = distill(pruned, graph, data, cfg)
            students[(ratio, importance, loss)] = out.module
            add(f"{label}, {LOSS_NAMES[loss]}", out.module, pruned.macs, **keys,
                feature_loss=loss, steps=args.distill_steps, pairs=len(out.pairs),
                train_seconds=out.history.seconds,
                loss_first_50=out.history.mean("loss", first=50),
                loss_last_50=out.history.mean("loss", last=50))

    start = time.perf_counter()
    add("bicubic (no network)", torch.nn.Upsample(scale_factor=scale, mode="bicubic"), None)
    add("teacher (RRDB + bicubic skip)", graph.module, graph.macs)
    for ratio in args.ratios:
        student(ratio, "layer-uniform", args.feature_losses)
    if args.contrast:
        student(0.25, "default", ["ka"])
    key = (0.25, "layer-uniform", "ka")
    source = next((r for r in rows if r.get("ratio") == 0.25 and r.get("feature_loss") == "ka"
                   and r["importance"] == "layer-uniform"), None)
    if not args.skip_int8 and key in students:
        pool = [lr for lr, _ in sr_pairs(SR_TRAIN, scale)]
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            int8 = _int8(students[key], held_out, pool, scale)
        rows.append({"model": "1/4 MACs, KA distillation, int8 (x86, ONNX Runtime)",
                     "gmacs_64x64_lr": source["gmacs_64x64_lr"],
                     "macs_ratio": source["macs_ratio"], "psnr": int8["psnr"],
                     "ssim": int8["ssim"], "psnr_per_image": [p["psnr"] for p in int8["per_image"]],
                     "int8_layers": int8["int8_layers"], "eval_seconds": int8["seconds"]})
        console.print(f"  [sr] int8: {int8['psnr']:.2f} dB, SSIM {int8['ssim']:.4f}")
    teacher_psnr = rows[1]["psnr"]
    goal = None if source is None else {
        "target_db": GOAL_DB, "gap_db": teacher_psnr - source["psnr"],
        "reached": teacher_psnr - source["psnr"] <= GOAL_DB}
    return {"teacher": {"config": config, "skip": "bicubic", "train": blob["train"]},
            "held_out": list(SR_HELD_OUT), "train_patch": args.patch, "rows": rows,
            "goal_ka_quarter": goal, "seconds": time.perf_counter() - start}


def _dcgan(config: dict, ndf: int, seed: int):
    torch.manual_seed(seed)
    gen = dcgan_init(zoo.dcgan_generator(**config))
    disc = dcgan_init(Discriminator(config["nc"], ndf, config["img_size"]))
    return gen, disc


def digit_generators(args, console: Console) -> dict:
    blob, clf_blob = _load("digits_dcgan.pt"), _load("digits_classifier.pt")
    classifier = DigitsClassifier(clf_blob["size"])
    classifier.load_state_dict(clf_blob["state_dict"])
    config, train = blob["config"], blob["train"]
    real, _ = digits(config["img_size"])
    steps, start = args.gan_steps or train["steps"], time.perf_counter()
    gan = GanConfig(nz=config["nz"], batch=train["batch"], lr=train["lr"], seed=train["seed"])
    rows = []

    def add(name, gen, density, **extra):
        scores = digits_scores(classifier, sample(gen, len(real), config["nz"], seed=123), real)
        rows.append({"model": name, "density": density, "sparsity": 1 - density, **scores,
                     **extra})
        console.print(f"  [digits] {name}: FID-digits {scores['fid']:.2f}, "
                      f"KID-digits {scores['kid']:.3f}")

    dense = zoo.dcgan_generator(**config)
    dense.load_state_dict(blob["state_dict"])
    add("dense (teacher)", dense, 1.0, steps=train["steps"])
    one_shot = prune_magnitude(dense, Masks.dense(dense), args.sparsity)
    one_shot.apply(dense)
    add("dense, magnitude-pruned, no retraining", dense, one_shot.density())

    gen, disc = _dcgan(config, train["ndf"], train["seed"])
    ticket = lottery(GanTrainer(gen, disc, real, gan), LotteryConfig(
        sparsity=args.sparsity, rounds=args.lottery_rounds, steps=steps,
        rewind_step=args.rewind_step, checkpoint_dir=WORK / "lottery"))
    add("lottery ticket (IMP, rewinding)", gen, ticket.masks.density(), steps=steps,
        rounds=args.lottery_rounds, rewind_step=args.rewind_step, per_round=ticket.rounds)

    gen, disc = _dcgan(config, train["ndf"], train["seed"])
    stu = sparse_train(GanTrainer(gen, disc, real, gan), SparseConfig(
        sparsity=args.sparsity, steps=steps, delta_t=args.delta_t, prune_rate=0.5,
        checkpoint=CheckpointConfig(WORK / "stu", every=500)))
    add("STU-GAN (sparse from scratch)", gen, stu.masks.density(), steps=steps,
        delta_t=args.delta_t, explorations=len(stu.updates),
        moved=sum(u["moved"] for u in stu.updates))
    order = torch.randperm(len(real), generator=torch.Generator().manual_seed(0))
    halves = real[order[:len(real) // 2]], real[order[len(real) // 2:]]
    reference = digits_scores(classifier, halves[0], halves[1])
    return {"generator": {"config": config, "train": train}, "sparsity": args.sparsity,
            "samples": len(real), "rows": rows, "real_half_vs_other_half": reference,
            "seconds": time.perf_counter() - start}


def _table(title: str, columns: list[str], rows: list[list]) -> Table:
    table = Table(title=title)
    for c in columns:
        table.add_column(c, justify="left" if c == "model" else "right")
    for r in rows:
        table.add_row(*[x if isinstance(x, str) else "-" if x is None else f"{x:.4g}" for x in r])
    return table


def _digits_in_child(args) -> dict:
    """The digits task in its own process (spawned): tiny GANs gain little from a second
    thread, so the two tasks run side by side, one core each."""
    torch.set_num_threads(max(1, args.threads // 2))
    torch.set_flush_denormal(True)
    return digit_generators(args, Console(width=160))


def main() -> None:
    p = argparse.ArgumentParser(description="fidelity recovery on real data")
    p.add_argument("--only", choices=["sr", "digits"])
    p.add_argument("--distill-steps", type=int, default=400)
    p.add_argument("--lr", type=float, default=5e-4)
    p.add_argument("--feature-weight", type=float, default=1.0)
    p.add_argument("--patch", type=int, default=64, help="HR training patch side")
    p.add_argument("--batch", type=int, default=16)
    p.add_argument("--ratios", type=float, nargs="+", default=[0.25, 0.1])
    p.add_argument("--feature-losses", nargs="+", default=["ka", "mse", "none"],
                   choices=["ka", "mse", "none"])
    p.add_argument("--no-contrast", dest="contrast", action="store_false",
                   help="skip the 1/4 student pruned with the default importance")
    p.add_argument("--skip-int8", action="store_true")
    p.add_argument("--gan-steps", type=int, default=0, help="0: the teacher's step count")
    p.add_argument("--sparsity", type=float, default=0.738, help="1 - 0.8^6, the paper's")
    p.add_argument("--lottery-rounds", type=int, default=3)
    p.add_argument("--rewind-step", type=int, default=100)
    p.add_argument("--delta-t", type=int, default=100)
    p.add_argument("--threads", type=int, default=2,
                   help="with both tasks and >= 2 threads, each task gets half, side by side")
    p.add_argument("--resume", action="store_true", help="continue interrupted training runs")
    args = p.parse_args()
    parallel = args.only is None and args.threads >= 2
    torch.set_num_threads(max(1, args.threads // 2) if parallel else args.threads)
    torch.set_flush_denormal(True)
    if not args.resume:
        shutil.rmtree(WORK, ignore_errors=True)
    console = Console(width=160)
    start = time.perf_counter()
    out = {"settings": dict(vars(args)), "environment": environment()}
    if RESULTS.exists():  # keep the other task's figures when only one is rerun
        previous = json.loads(RESULTS.read_text())
        out.update({k: previous[k] for k in ("super_resolution", "digits") if k in previous})
    pool = digits_job = None
    if parallel:
        pool = ProcessPoolExecutor(1, mp_context=multiprocessing.get_context("spawn"))
        digits_job = pool.submit(_digits_in_child, args)
    if args.only in (None, "sr"):
        console.print("super-resolution x4 (held-out photographs)")
        out["super_resolution"] = super_resolution(args, console)
    if digits_job is not None:
        out["digits"] = digits_job.result()
        pool.shutdown()
    elif args.only in (None, "digits"):
        console.print("digits generators")
        out["digits"] = digit_generators(args, console)
    out["seconds"] = time.perf_counter() - start
    RESULTS.parent.mkdir(parents=True, exist_ok=True)
    RESULTS.write_text(json.dumps(out, indent=2, default=str))

    if "super_resolution" in out:
        sr = out["super_resolution"]
        console.print(_table("x4 super-resolution on held-out photographs " + ", ".join(
            sr["held_out"]), ["model", "GMACs (64x64 in)", "MACs ratio", "PSNR dB", "SSIM"],
            [[r["model"], r["gmacs_64x64_lr"], r["macs_ratio"], r["psnr"], r["ssim"]]
             for r in sr["rows"]]))
        goal = sr["goal_ka_quarter"]
        if goal:
            verdict = "reached" if goal["reached"] else "NOT reached"
            console.print(f"goal: KA 1/4 student within {goal['target_db']} dB of the teacher: "
                          f"gap {goal['gap_db']:.2f} dB, {verdict}")
    if "digits" in out:
        d = out["digits"]
        console.print(_table(f"digits generators at {d['sparsity']:.1%} sparsity "
                             f"(FID/KID-digits, {d['samples']} samples)",
                             ["model", "density", "FID-digits", "KID-digits"],
                             [[r["model"], r["density"], r["fid"], r["kid"]] for r in d["rows"]]))
        ref = d["real_half_vs_other_half"]
        console.print(f"reference: two disjoint halves of the real digits: FID {ref['fid']:.2f}, "
                      f"KID {ref['kid']:.3f}")
    console.print(f"total {out['seconds']:.0f} s; wrote {RESULTS}")


if __name__ == "__main__":
    main()
