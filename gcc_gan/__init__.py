"""gcc-gan: a hardware-aware compression compiler for GAN generators.

Pipeline (one way): trace -> passes -> lower -> measure. `compile` runs it end to end;
`trace` captures a generator as an ATen graph (`GanGraph`) with exact costs;
`analyze_channels` finds which channels must be pruned together; `prune_channels` meets a MACs
budget; `zoo` holds reference generators.
"""

from . import zoo
from .api import CompiledGenerator, compile, load
from .channels import ChannelAnalysis, analyze_channels
from .cost import CostAnalysis, NodeCost
from .ir import GanGraph, TraceError, trace
from .lower import LoweringError
from .measure import Latency
from .metrics import Fidelity
from .passes.channel_prune import PruneConfig, PruneResult, prune_channels
from .search import BudgetError
from .report import CompileReport
from .summary import LayerTable

__version__ = "0.1.0"

__all__ = ["BudgetError", "ChannelAnalysis", "CompileReport", "CompiledGenerator",
           "CostAnalysis", "Fidelity", "GanGraph", "LayerTable", "Latency", "LoweringError",
           "NodeCost", "PruneConfig", "PruneResult", "TraceError", "analyze_channels", "compile",
           "load", "prune_channels", "trace", "zoo", "__version__"]
