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
the training times, thread counts and metrics. Training resumes from build/teachers/<name>/
after an interruption (`--fresh` starts over).
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


def _restoration_teacher(name: str, description: str, model, data, cfg: dict, held_out,
                         scale: int, baseline: tuple[str, torch.nn.Module], saved: dict) -> dict:
    """Train `model` with L1 on `data`, score it and a network-free `baseline` on the held-out
    pairs, and save it as `name`.pt with `saved` (its config) beside the state_dict."""
    trainer = SupervisedTrainer(model, data, cfg["steps"], lr=cfg["lr"], loss="l1")
    history = run_steps(trainer.step, cfg["steps"], state=trainer.state(),
                        checkpoint=_checkpoint(name), description=description)
    quality = sr_metrics(model, held_out, scale)
    reference = sr_metrics(baseline[1], held_out, scale)
    torch.save({"state_dict": model.state_dict(), **saved, "train": cfg,
                "held_out": SR_HELD_OUT}, OUT / f"{name}.pt")
    return {"train": cfg, "params": sum(p.numel() for p in model.parameters()),
            "seconds_this_run": history.seconds, "resumed_from_step": history.resumed_from,
            "loss_last_100": history.mean("loss", last=100),
            "held_out": list(SR_HELD_OUT), "psnr": quality["psnr"], "ssim": quality["ssim"],
            f"{baseline[0]}_psnr": reference["psnr"], f"{baseline[0]}_ssim": reference["ssim"]}


def train_sr(steps: int) -> dict:
    cfg = {**SR_TRAIN, "steps": steps}
    torch.manual_seed(cfg["seed"])
    scale = SR_MODEL["scale"]
    model = BicubicResidual(zoo.rrdb_generator(**SR_MODEL), scale)
    data = SRPatches(SRConfig(scale=scale, patch=cfg["patch"], batch=cfg["batch"],
                              seed=cfg["seed"]))
    bicubic = torch.nn.Upsample(scale_factor=scale, mode="bicubic")
    return {"model": "BicubicResidual(rrdb_generator)", "config": SR_MODEL,
            **_restoration_teacher("sr_rrdb", "SR teacher (RRDB)", model, data, cfg,
                                   sr_pairs(SR_HELD_OUT, scale), scale, ("bicubic", bicubic),
                                   {"config": SR_MODEL, "skip": "bicubic"})}


def train_resnet(steps: int) -> dict:
    cfg = {**RESNET_TRAIN, "steps": steps}
    torch.manual_seed(cfg["seed"])
    model = GlobalResidual(zoo.resnet_generator(**RESNET_MODEL))
    data = NoisyPatches(SRConfig(scale=1, patch=cfg["patch"], batch=cfg["batch"],
                                 seed=cfg["seed"]), cfg["sigma"])
    return {"model": "GlobalResidual(resnet_generator)", "config": RESNET_MODEL,
            **_restoration_teacher("denoise_resnet", "ResNet teacher (denoising)", model, data,
                                   cfg, noisy_pairs(SR_HELD_OUT, cfg["sigma"]), 1,
                                   ("noisy", torch.nn.Identity()),
                                   {"config": RESNET_MODEL, "skip": "identity"})}


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
    parser.add_argument("--only", choices=["sr", "resnet", "digits"],
                        help="train one task's teachers")
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

    def timed(key: str, train, *train_args):
        start = time.perf_counter()
        out = train(*train_args)
        entry = out[1] if isinstance(out, tuple) else out
        record[key] = {**entry, "wall_seconds": time.perf_counter() - start,
                       "threads": args.threads}
        record_path.write_text(json.dumps(record, indent=2))  # after each: none is lost
        return out

    if args.only in (None, "digits"):
        classifier, _ = timed("digits_classifier", train_classifier, args.classifier_steps)
        timed("digits_dcgan", train_dcgan, args.gan_steps, classifier)
    if args.only in (None, "sr"):
        timed("sr_rrdb", train_sr, args.sr_steps)
    if args.only in (None, "resnet"):
        timed("denoise_resnet", train_resnet, args.resnet_steps)
    print(json.dumps(record, indent=2))
    for f in sorted(OUT.glob("*.pt")):
        print(f"{f.name}: {f.stat().st_size / 1e6:.2f} MB")


if __name__ == "__main__":
    main()
