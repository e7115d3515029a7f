"""Compression passes, one file each, imported as ``gcc_gan.passes``.

A pass is ``(graph, target, config) -> result`` with a frozen config dataclass; it never edits
its input graph. No pass has landed yet: channel pruning, quantization, weight sharing,
sparsity and binarization arrive with their own issues.
"""
