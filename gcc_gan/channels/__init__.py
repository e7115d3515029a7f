"""Channel dependency analysis: which channels of which tensors must be pruned together."""

from .analysis import Barrier, ChannelAnalysis, ChannelGroup, analyze_channels
from .units import Cause

__all__ = ["Barrier", "Cause", "ChannelAnalysis", "ChannelGroup", "analyze_channels"]
