"""Named sets of ATen ops, by what they do to data (after tinygrad's GroupOp).

Sets hold op *packets* (``aten.add``), so every overload (``.Tensor``, ``.Scalar``, ``.out``)
belongs with its family; `packet(target)` maps a node target to its packet. Cost rules and,
later, channel rules look ops up here; an op in no set is unknown and is never guessed about.
"""

from __future__ import annotations

import operator

import torch

aten = torch.ops.aten


def packet(target):
    """The op packet of an fx call_function target (the target itself if it has none)."""
    return getattr(target, "overloadpacket", target)


def op_set(*names: str) -> frozenset:
    """Packets named in `names`; names this torch build lacks are skipped."""
    return frozenset(getattr(aten, n) for n in names if hasattr(aten, n))


Conv = op_set("conv1d", "conv2d", "conv3d", "convolution", "_convolution")
ConvTranspose = op_set("conv_transpose1d", "conv_transpose2d", "conv_transpose3d")
Matmul = op_set("linear", "addmm", "mm", "bmm", "baddbmm", "matmul", "mv", "dot", "vdot",
              "einsum", "scaled_dot_product_attention")

Norm = op_set("batch_norm", "instance_norm", "group_norm", "layer_norm", "native_batch_norm",
            "_native_batch_norm_legit_no_training", "_native_batch_norm_legit",
            "native_group_norm", "native_layer_norm", "rms_norm")
Relu = op_set("relu", "relu_")
# exported as ONNX InstanceNormalization: the norm an int8 lowering runs between 8-bit tensors
InstanceNorm = op_set("instance_norm")
Activation = op_set("relu", "relu_", "leaky_relu", "leaky_relu_", "tanh", "tanh_", "sigmoid",
                  "sigmoid_", "gelu", "gelu_", "silu", "silu_", "hardtanh", "hardtanh_", "elu",
                  "elu_", "selu", "prelu", "_prelu_kernel", "softplus", "hardswish",
                  "hardswish_", "hardsigmoid", "mish", "relu6", "celu", "glu", "logit")
Arithmetic = op_set("add", "add_", "sub", "sub_", "mul", "mul_", "div", "div_", "pow", "pow_",
                  "rsqrt", "sqrt", "exp", "log", "neg", "abs", "clamp", "clamp_", "clamp_min",
                  "clamp_max", "where", "square", "reciprocal", "sin", "cos", "erf", "lerp",
                  "addcmul", "addcdiv", "sign", "floor", "ceil", "round", "fmod", "remainder",
                  "maximum", "minimum", "rsub", "exp2", "log2", "log1p", "expm1", "tan",
                  "atan2", "eq", "ne", "lt", "le", "gt", "ge", "logical_not", "logical_and",
                  "bitwise_not", "masked_fill", "masked_fill_", "copy_", "fill_", "zero_")
Resample = op_set("upsample_nearest1d", "upsample_nearest2d", "upsample_nearest3d",
                "upsample_bilinear2d", "upsample_bicubic2d", "upsample_trilinear3d",
                "upsample_linear1d", "_upsample_nearest_exact2d", "_upsample_bilinear2d_aa",
                "interpolate", "grid_sampler", "grid_sampler_2d", "avg_pool1d", "avg_pool2d",
                "avg_pool3d", "max_pool1d", "max_pool2d", "max_pool3d",
                "max_pool2d_with_indices", "adaptive_avg_pool1d", "adaptive_avg_pool2d",
                "adaptive_max_pool2d", "_adaptive_avg_pool2d")
Reduction = op_set("mean", "sum", "var", "std", "var_mean", "std_mean", "amax", "amin", "max",
                 "min", "norm", "linalg_vector_norm", "logsumexp", "softmax", "_softmax",
                 "log_softmax", "_log_softmax", "cumsum", "prod", "argmax", "argmin", "all",
                 "any")
# Ops that only return a view of their input: no new activation memory.
View = op_set("view", "_unsafe_view", "reshape", "flatten", "unflatten", "permute", "transpose",
            "t", "expand", "expand_as", "squeeze", "unsqueeze", "slice", "select", "alias",
            "detach", "split", "split_with_sizes", "chunk", "unbind", "narrow", "view_as",
            "as_strided", "unsafe_split", "movedim", "diagonal", "lift_fresh_copy")
# Views that pick or reorder elements: ONNX has no views, so lowered programs copy them (Slice,
# Transpose, Gather, Expand); reshapes stay free (Reshape aliases its input in ONNX Runtime).
ReorderingView = op_set("permute", "transpose", "t", "movedim", "expand", "expand_as", "slice",
                        "select", "narrow", "diagonal", "as_strided")
# Ops that move or copy data without arithmetic.
Pad = op_set("pad", "constant_pad_nd", "reflection_pad1d", "reflection_pad2d",
             "reflection_pad3d", "replication_pad1d", "replication_pad2d", "replication_pad3d")
Movement = View | Pad | op_set("cat", "stack", "pixel_shuffle", "pixel_unshuffle", "repeat", "flip",
                               "roll", "index_select", "gather", "index", "clone", "contiguous",
                               "_to_copy", "to", "type_as", "embedding", "tile", "dropout",
                               "feature_dropout", "alpha_dropout", "native_dropout",
                               "channel_shuffle", "scatter", "index_put", "repeat_interleave")
# Movement that sends every element to a new place through a 6-D permutation (depth to space and
# back): runtimes run it many times slower per byte than a pad or a concat (uint8 DepthToSpace
# in ONNX Runtime: 2 ms for 0.8 MB), so cost models give it a kernel kind of its own.
Shuffle = op_set("pixel_shuffle", "pixel_unshuffle", "channel_shuffle")
# Ops whose output holds only values of their input (and a pad's constant): they commute with
# a per-tensor quantize or dequantize, so int8 lowerings run them on 8-bit tensors.
ValueMover = Pad | Shuffle | op_set(
    "view", "_unsafe_view", "reshape", "flatten", "unflatten", "permute", "transpose", "t",
    "squeeze", "unsqueeze", "slice", "narrow", "alias", "detach")
Creation = op_set("zeros", "ones", "full", "empty", "arange", "zeros_like", "ones_like",
                "full_like", "empty_like", "new_zeros", "new_ones", "new_full", "new_empty",
                "randn", "rand", "randn_like", "rand_like", "scalar_tensor", "tensor", "linspace")
# Shape arithmetic and runtime checks that export inserts: no tensor work at all.
Symbolic = op_set("sym_size", "sym_numel", "sym_stride", "sym_storage_offset", "_assert_scalar",
                "_assert_tensor_metadata", "sym_constrain_range_for_size",
                "sym_constrain_range", "_assert_async", "item", "_local_scalar_dense") | {
    operator.add, operator.sub, operator.mul, operator.floordiv, operator.truediv,
    operator.mod, operator.neg, operator.pow, operator.eq, operator.ne, operator.lt,
    operator.le, operator.gt, operator.ge, torch.sym_max, torch.sym_min, torch.sym_sum,
    torch.sym_float, torch.sym_int, torch.sym_not}
# A multi-output op's results are picked by getitem: no work, and the same memory.
GetItem = frozenset({operator.getitem})
