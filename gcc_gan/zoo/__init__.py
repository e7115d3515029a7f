"""Reference GAN generators written from the papers' architecture descriptions.

Each factory takes width/size arguments so tests build tiny versions and benchmarks the
standard ones; `ZOO` maps a name to its factory, configs and example-input maker.
"""

from .registry import ZOO, ZooConfig, ZooEntry, build, documented_macs, example_inputs
from .resnet import resnet_generator
from .unet import unet_generator
from .inception import inception_generator
from .sngan import sngan_generator
from .dcgan import dcgan_generator
from .spade import spade_generator
from .stylegan2 import stylegan2_generator
from .rrdb import rrdb_generator

__all__ = [
    "ZOO", "ZooConfig", "ZooEntry", "build", "documented_macs", "example_inputs",
    "resnet_generator", "unet_generator", "inception_generator", "sngan_generator",
    "dcgan_generator", "spade_generator", "stylegan2_generator", "rrdb_generator",
]
