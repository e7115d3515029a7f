"""gcc-gan: a hardware-aware compression compiler for GAN generators.

Pipeline (one way): trace -> passes -> lower -> measure. This release provides the first stage:
`trace` captures a generator as an ATen graph (`GanGraph`) with exact costs, and `zoo` holds
reference generators to compile.
"""

from . import zoo
from .cost import CostAnalysis, NodeCost
from .ir import GanGraph, TraceError, trace
from .summary import LayerTable

__version__ = "0.1.0"

__all__ = ["CostAnalysis", "GanGraph", "LayerTable", "NodeCost", "TraceError", "trace", "zoo",
           "__version__"]
