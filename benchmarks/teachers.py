"""Train the small real teachers the quality benchmark compresses, on this CPU, from data that
ships with scikit-image and scikit-learn (nothing is downloaded).

Run: `make teachers` (or `.venv/bin/python benchmarks/teachers.py [--only sr|resnet|digits]`).

- `sr_rrdb.pt`: ESRGAN's RRDBNet (zoo `rrdb_generator`, nf=32, nb=2, gc=16) under a global
  bicubic skip (`tasks.BicubicResidual`: without it, 1800 steps left the RRDB at 27.0 dB, below
  bicubic's 27.5), x4 super-resolution trained with L1 on (LR, HR) crops of scikit-image's
  photographs; the held-out photographs (`gcc_gan.train.tasks.SR_HELD_OUT`) are never seen.
  Reports PSNR/SSIM on them, and bicubic's.
- `denoise_resnet.pt`: CycleGAN's ResnetGenerator (zoo `resnet_generator`, ngf 16, 6 blocks,
  instance norm) under a global skip (`tasks.GlobalResidual`), trained with L1 to remove Gaussian
  noise (sigma 0.1) from crops of the same photographs; reports PSNR/SSIM on the held-out ones
  (fixed noise), and the noisy input's. `benchmarks/allocation.py` prunes it.
- `digits_classifier.pt`: the feature extractor of FID/KID-digits (`gcc_gan.train.fid`), trained
  on 80% of scikit-learn's digits; reports accuracy on the other 20%.
- `digits_dcgan.pt`: DCGAN (zoo `dcgan_generator`, nz=32, ngf=32, 1 channel, 16x16) trained on
  the digits with the non-saturating GAN loss; reports FID/KID-digits against the real digits.

Each file holds the state_dict, the zoo config and how it was trained; `teachers.json` holds
the training times, thread counts and metrics. Training resumes from build/teachers/<name>/ after an
interruption (`--fresh` starts over).
"""

from __future__ import annotations

import os

# Before torch starts OpenMP: on a shared machine, spinning worker threads wait out
# descheduled peers (measured here: 5 s a step instead of 0.4 s with a second busy process).
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

import argparse
import json
import shutil
import time
from pathlib import Path

import torch

from gcc_gan import zoo
from gcc_gan.train.fid import digits_scores, train_digits_classifier
from gcc_gan.train.gan import Discriminator, GanConfig, GanTrainer, dcgan_init, sample
from gcc_gan.train.loop import CheckpointConfig, SupervisedTrainer, run_steps
from gcc_gan.train.tasks import (SR_HELD_OUT, BicubicResidual, GlobalResidual, NoisyPatches,
                                 SRConfig, SRPatches, digits, noisy_pairs, sr_metrics, sr_pairs)

OUT = Path(__file__).parent / "teachers"
WORK = Path(__file__).parents[1] / "build" / "teachers"
SR_MODEL = dict(in_nc=3, out_nc=3, nf=32, nb=2, gc=16, scale=4, upsample="nearest")
SR_TRAIN = dict(steps=2800, lr=4e-4, patch=64, batch=16, seed=0)
DCGAN_MODEL = dict(nz=32, ngf=32, nc=1, img_size=16)
DCGAN_TRAIN = dict(steps=3000, batch=64, lr=2e-4, ndf=32, seed=0)
RESNET_MODEL = dict(input_nc=3, output_nc=3, ngf=16, n_blocks=6)
RESNET_TRAIN = dict(steps=2400, lr=1e-3, patch=64, batch=16, sigma=0.1, seed=0)
CLASSIFIER_TRAIN = dict(steps=1500, size=16, seed=0)


def _checkpoint(name: str) -> CheckpointConfig:
    return CheckpointConfig(WORK / name, every=250)


def train_sr(steps: int) -> dict:
    cfg = {**SR_TRAIN, "steps": steps}
    torch.manual_seed(cfg["seed"])
    model = BicubicResidual(zoo.rrdb_generator(**SR_MODEL), SR_MODEL["scale"])
    data = SRPatches(SRConfig(scale=SR_MODEL["scale"], patch=cfg["patch"], batch=cfg["batch"],
                              seed=cfg["seed"]))
    trainer = SupervisedTrainer(model, data, steps, lr=cfg["lr"], loss="l1")
    history = run_steps(trainer.step, steps, state=trainer.state(), checkpoint=_checkpoint("sr"),
                        description="SR teacher (RRDB)")
    held_out = sr_pairs(SR_HELD_OUT, SR_MODEL["scale"])
    quality = sr_metrics(model, held_out, SR_MODEL["scale"])
    bicubic = sr_metrics(torch.nn.Upsample(scale_factor=SR_MODEL["scale"], mode="bicubic"),
                         held_out, SR_MODEL["scale"])
    torch.save({"state_dict": model.state_dict(), "config": SR_MODEL, "skip": "bicubic",
                "train": cfg, "held_out": SR_HELD_OUT}, OUT / "sr_rrdb.pt")
    return {"model": "BicubicResidual(rrdb_generator)", "config": SR_MODEL, "train": cfg,
            "params": sum(p.numel() for p in model.parameters()),
            "seconds_this_run": history.seconds, "resumed_from_step": history.resumed_from,
            "loss_last_100": history.mean("loss", last=100),
            "held_out": list(SR_HELD_OUT), "psnr": quality["psnr"], "ssim": quality["ssim"],
            "bicubic_psnr": bicubic["psnr"], "bicubic_ssim": bicubic["ssim"]}


def train_resnet(steps: int) -> dict:
    cfg = {**RESNET_TRAIN, "steps": steps}
    torch.manual_seed(cfg["seed"])
    model = GlobalResidual(zoo.resnet_generator(**RESNET_MODEL))
    data = NoisyPatches(SRConfig(scale=1, patch=cfg["patch"], batch=cfg["batch"],
                                 seed=cfg["seed"]), cfg["sigma"])
    trainer = SupervisedTrainer(model, data, steps, lr=cfg["lr"], loss="l1")
    history = run_steps(trainer.step, steps, state=trainer.state(),
                        checkpoint=_checkpoint("resnet"), description="ResNet teacher (denoising)")
    held_out = noisy_pairs(SR_HELD_OUT, cfg["sigma"])
    quality = sr_metrics(model, held_out, scale=1)
    noisy = sr_metrics(torch.nn.Identity(), held_out, scale=1)
    torch.save({"state_dict": model.state_dict(), "config": RESNET_MODEL, "skip": "identity",
                "train": cfg, "held_out": SR_HELD_OUT}, OUT / "denoise_resnet.pt")
    return {"model": "GlobalResidual(resnet_generator)", "config": RESNET_MODEL, "train": cfg,
            "params": sum(p.numel() for p in model.parameters()),
            "seconds_this_run": history.seconds, "resumed_from_step": history.resumed_from,
            "loss_last_100": history.mean("loss", last=100),
            "held_out": list(SR_HELD_OUT), "psnr": quality["psnr"], "ssim": quality["ssim"],
            "noisy_psnr": noisy["psnr"], "noisy_ssim": noisy["ssim"]}


def train_classifier(steps: int) -> tuple[torch.nn.Module, dict]:
    cfg = {**CLASSIFIER_TRAIN, "steps": steps}
    model, report = train_digits_classifier(cfg["size"], steps, seed=cfg["seed"],
                                            checkpoint=_checkpoint("classifier"))
    torch.save({"state_dict": model.state_dict(), "size": cfg["size"], "train": cfg},
               OUT / "digits_classifier.pt")
    return model, {"train": cfg, "test_accuracy": report.test_accuracy,
                   "seconds_this_run": report.seconds}


def train_dcgan(steps: int, classifier: torch.nn.Module) -> dict:
    cfg = {**DCGAN_TRAIN, "steps": steps}
    torch.manual_seed(cfg["seed"])
    real, _ = digits(DCGAN_MODEL["img_size"])
    gen = dcgan_init(zoo.dcgan_generator(**DCGAN_MODEL))
    disc = dcgan_init(Discriminator(DCGAN_MODEL["nc"], cfg["ndf"], DCGAN_MODEL["img_size"]))
    trainer = GanTrainer(gen, disc, real, GanConfig(nz=DCGAN_MODEL["nz"], batch=cfg["batch"],
                                                    lr=cfg["lr"], seed=cfg["seed"]))
    history = run_steps(trainer.step, steps, state=trainer.state(),
                        checkpoint=_checkpoint("dcgan"), description="digits DCGAN")
    scores = digits_scores(classifier, sample(gen, len(real), DCGAN_MODEL["nz"]), real)
    torch.save({"state_dict": gen.state_dict(), "config": DCGAN_MODEL, "train": cfg},
               OUT / "digits_dcgan.pt")
    return {"model": "dcgan_generator", "config": DCGAN_MODEL, "train": cfg,
            "params": sum(p.numel() for p in gen.parameters()),
            "seconds_this_run": history.seconds, "resumed_from_step": history.resumed_from,
            **{f"{k}_digits": v for k, v in scores.items()}}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--only", choices=["sr", "resnet", "digits"], help="train one task's teachers")
    parser.add_argument("--sr-steps", type=int, default=SR_TRAIN["steps"])
    parser.add_argument("--resnet-steps", type=int, default=RESNET_TRAIN["steps"])
    parser.add_argument("--gan-steps", type=int, default=DCGAN_TRAIN["steps"])
    parser.add_argument("--classifier-steps", type=int, default=CLASSIFIER_TRAIN["steps"])
    parser.add_argument("--fresh", action="store_true", help="ignore saved training progress")
    parser.add_argument("--threads", type=int, default=2)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    torch.set_flush_denormal(True)
    if args.fresh:
        shutil.rmtree(WORK, ignore_errors=True)
    OUT.mkdir(parents=True, exist_ok=True)
    record_path = OUT / "teachers.json"
    record = json.loads(record_path.read_text()) if record_path.exists() else {}
    for entry in ("digits_classifier", "digits_dcgan", "sr_rrdb"):   # before per-entry threads
        if entry in record and "threads" in record:
            record[entry].setdefault("threads", record["threads"])
    record.pop("threads", None)
    if args.only in (None, "digits"):
        start = time.perf_counter()
        classifier, record["digits_classifier"] = train_classifier(args.classifier_steps)
        record["digits_classifier"]["wall_seconds"] = time.perf_counter() - start
        record["digits_classifier"]["threads"] = args.threads
        start = time.perf_counter()
        record["digits_dcgan"] = train_dcgan(args.gan_steps, classifier)
        record["digits_dcgan"]["wall_seconds"] = time.perf_counter() - start
        record["digits_dcgan"]["threads"] = args.threads
        record_path.write_text(json.dumps(record, indent=2))
    if args.only in (None, "sr"):
        start = time.perf_counter()
        record["sr_rrdb"] = train_sr(args.sr_steps)
        record["sr_rrdb"]["wall_seconds"] = time.perf_counter() - start
        record["sr_rrdb"]["threads"] = args.threads
        record_path.write_text(json.dumps(record, indent=2))
    if args.only in (None, "resnet"):
        start = time.perf_counter()
        record["denoise_resnet"] = train_resnet(args.resnet_steps)
        record["denoise_resnet"]["wall_seconds"] = time.perf_counter() - start
        record["denoise_resnet"]["threads"] = args.threads
        record_path.write_text(json.dumps(record, indent=2))
    print(json.dumps(record, indent=2))
    for f in sorted(OUT.glob("*.pt")):
        print(f"{f.name}: {f.stat().st_size / 1e6:.2f} MB")


if __name__ == "__main__":
    main()
