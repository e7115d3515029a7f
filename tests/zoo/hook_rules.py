"""Hook rules for zoo modules that call functional convs / linears themselves (StyleGAN2).

Importing this module registers the rules with `tests.zoo.hook_macs`. Each rule counts only
the module's OWN functional call; child modules with rules (a modulated conv's affine
`modulation` EqualLinear, its `blur`) are hooked and counted separately.

    ModulatedConv2d: B*Cout*H*W*Cin*k^2 for the batch-folded grouped conv (per-sample weights);
                     upsampling: the stride-2 grouped transposed conv, real = B*Cin*H*W*Cout*k^2
                     (input-based), literature = B*Cout*(2H-2+k)*(2W-2+k)*Cin*k^2 (its output
                     grid, before the blur); modulation / demodulation are elementwise, not MACs.
    EqualLinear:     out.numel() * in_dim, like nn.Linear.
    Blur:            depthwise 4x4 conv, out.numel() * 16.
    BlurUpsample:    depthwise stride-2 transposed 4x4 conv, real = in.numel() * 16,
                     literature = out.numel() * 16.
"""

from __future__ import annotations

import math

from gcc_gan.zoo.stylegan2 import Blur, BlurUpsample, EqualLinear, ModulatedConv2d
from tests.zoo.hook_macs import hook_rule


@hook_rule(ModulatedConv2d)
def _modulated_conv(m, inputs, out):
    b, cin, h, w = inputs[0].shape
    k2 = m.kernel_size**2
    if not m.upsample:
        macs = b * m.out_channel * h * w * cin * k2
        return macs, macs
    oh, ow = 2 * (h - 1) + m.kernel_size, 2 * (w - 1) + m.kernel_size
    return b * cin * h * w * m.out_channel * k2, b * m.out_channel * oh * ow * cin * k2


@hook_rule(EqualLinear)
def _equal_linear(m, inputs, out):
    macs = out.numel() * m.in_dim
    return macs, macs


@hook_rule(Blur)
def _blur(m, inputs, out):
    macs = out.numel() * math.prod(m.kernel.shape[2:])
    return macs, macs


@hook_rule(BlurUpsample)
def _blur_upsample(m, inputs, out):
    k = math.prod(m.kernel.shape[2:])
    return inputs[0].numel() * k, out.numel() * k
