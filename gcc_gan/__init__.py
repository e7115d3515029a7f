"""gcc-gan: a hardware-aware compression compiler for GAN generators.

Pipeline (one way): trace -> passes -> lower -> measure. So far: `trace` captures a generator
as an ATen graph (`GanGraph`) with exact costs; `analyze_channels` finds which channels must be
pruned together; `prune_channels` meets a MACs budget; `zoo` holds reference generators.
"""

from . import zoo
from .channels import ChannelAnalysis, analyze_channels
from .cost import CostAnalysis, NodeCost
from .ir import GanGraph, TraceError, trace
from .passes.channel_prune import PruneConfig, PruneResult, prune_channels
from .search import BudgetError
from .summary import LayerTable

__version__ = "0.1.0"

__all__ = ["BudgetError", "ChannelAnalysis", "CostAnalysis", "GanGraph", "LayerTable",
           "NodeCost", "PruneConfig", "PruneResult", "TraceError", "analyze_channels",
           "prune_channels", "trace", "zoo", "__version__"]
