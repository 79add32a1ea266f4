"""U-Net (Ronneberger et al. 2015) sized as the seed tutorial: 5 levels of two 3x3 conv + BN + ReLU
with 32/64/128/256/512 filters, 2x2 max-pool down, 2x2 stride-2 transposed conv up, skip
concatenation, 1x1 conv to the classes. About 7.8 M parameters, 13.5 GFLOP per 176x208 slice.

Conv + BatchNorm + ReLU chains are kept adjacent so MXNet's oneDNN backend can fuse them
(Segmenter hybridizes with `backend="MKLDNN"`)."""
from __future__ import annotations

from engine.core.classes import NUM_CLASSES
from engine.core.mx_env import get_mx

mx = get_mx()
nn = mx.gluon.nn


class ConvBNReLU(mx.gluon.HybridBlock):
    def __init__(self, channels: int, **kw):
        super().__init__(**kw)
        self.conv = nn.Conv2D(channels, 3, padding=1, use_bias=False)
        self.bn = nn.BatchNorm()

    def hybrid_forward(self, F, x):
        # Activation, not F.relu: oneDNN runs it; F.relu is a plain kernel 13x slower (19% of the
        # U-Net's time at batch 8). Rewriting the transposed convs as 1x1 conv + depth_to_space was
        # tried for speed and was 12% slower.
        return F.Activation(self.bn(self.conv(x)), act_type="relu")


class DoubleConv(nn.HybridSequential):
    def __init__(self, channels: int, **kw):
        super().__init__(**kw)
        self.add(ConvBNReLU(channels), ConvBNReLU(channels))


class UNet(mx.gluon.HybridBlock):
    """Input (N, 1, H, W) with H, W multiples of 2**(levels-1); output (N, classes, H, W) logits."""

    def __init__(self, classes: int = NUM_CLASSES, base: int = 32, levels: int = 5, **kw):
        super().__init__(**kw)
        self.levels = levels
        self.base = base
        widths = [base * 2**i for i in range(levels)]
        self.down = nn.HybridSequential()
        self.up = nn.HybridSequential()
        self.merge = nn.HybridSequential()
        for w in widths:
            self.down.add(DoubleConv(w))
        for w in reversed(widths[:-1]):
            self.up.add(nn.Conv2DTranspose(w, 2, strides=2))
            self.merge.add(DoubleConv(w))
        self.head = nn.Conv2D(classes, 1)

    @property
    def multiple(self) -> int:
        return 2 ** (self.levels - 1)

    def hybrid_forward(self, F, x):
        skips = []
        for i, block in enumerate(self.down):
            x = block(x)
            if i < self.levels - 1:
                skips.append(x)
                x = F.Pooling(x, kernel=(2, 2), stride=(2, 2), pool_type="max")
        for up, merge, skip in zip(self.up, self.merge, reversed(skips)):
            x = merge(F.concat(skip, up(x), dim=1))
        return self.head(x)
