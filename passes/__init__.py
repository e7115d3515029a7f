"""Compression passes, one file each, imported as ``gcc_gan.passes``.

A pass is ``(graph, target, config) -> result`` with a frozen config dataclass; it never edits
its input graph. Landed: `fold_norms.fold_norms`, `deconv_to_subpixel.deconv_to_subpixel`,
`channel_prune.prune_channels`, `quantize.quantize_int8`. Weight sharing, sparsity and
binarization arrive with their own issues.
"""
