"""The IR: a torch.export ATen graph (`GanGraph`) and the tracer that builds it."""

from .graph import GanGraph
from .trace import TraceError, trace

__all__ = ["GanGraph", "TraceError", "trace"]
