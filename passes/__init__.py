"""Compression passes, one file each, imported as ``gcc_gan.passes``.

A pass is ``(graph, target, config) -> result`` with a frozen config dataclass; it never edits
its input graph. `fold_norms.fold_norms`, `deconv_to_subpixel.deconv_to_subpixel`,
`channel_prune.prune_channels`, `quantize.quantize_int8`, `sparsify.sparsify`,
`kmeans_share.share_weights_kmeans`, `binarize.binarize` and `split_taps.split_taps`. Passes that change weights without
changing the program's ops (int8, sparsity, k-means, binarization) annotate the nodes they
decide for; lowering and the saved artifact apply the annotations.
"""
