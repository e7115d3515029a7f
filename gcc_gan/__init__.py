"""gcc-gan: a hardware-aware compression compiler for GAN generators.

Pipeline (one way): trace -> passes -> lower -> measure. `compile` runs it end to end;
`trace` captures a generator as an ATen graph (`GanGraph`) with exact costs;
`analyze_channels` finds which channels must be pruned together; `prune_channels` meets a MACs
budget; `targets` holds the hardware profiles and their cost models (`gcc_gan.tune.tune` fits
one on a device); `zoo` holds reference generators.
"""

from . import targets, zoo
from .api import CompiledGenerator, compile, load
from .backends import BACKENDS, get_backend
from .channels import ChannelAnalysis, analyze_channels
from .cost import CostAnalysis, NodeCost
from .ir import GanGraph, TraceError, trace
from .lower import LoweringError
from .measure import Latency
from .metrics import Fidelity
from .passes.binarize import BinarizeConfig, binarize
from .passes.channel_prune import PruneConfig, PruneResult, prune_channels
from .passes.kmeans_share import KmeansConfig, share_weights_kmeans
from .passes.quantize import QuantConfig, quantize_int8
from .passes.sparsify import SparsifyConfig, sparsify
from .report import CompileReport
from .search import BudgetError
from .size import size_table
from .summary import LayerTable
from .targets import Target

__version__ = "0.1.0"

__all__ = ["BACKENDS", "BinarizeConfig", "BudgetError", "ChannelAnalysis", "CompileReport",
           "CompiledGenerator", "CostAnalysis", "Fidelity", "GanGraph", "KmeansConfig",
           "LayerTable", "Latency", "LoweringError", "NodeCost", "PruneConfig", "PruneResult",
           "QuantConfig", "SparsifyConfig", "Target", "TraceError", "analyze_channels", "binarize",
           "compile", "get_backend", "load", "prune_channels", "quantize_int8",
           "share_weights_kmeans", "size_table", "sparsify", "targets", "trace", "zoo",
           "__version__"]
