"""ENet (Paszke et al. 2016, "ENet: A Deep Neural Network Architecture for Real-Time Semantic
Segmentation"): initial block, bottleneck stages 1-5 with dilated and asymmetric convolutions,
per-channel PReLU, spatial dropout (0.01 in stage 1, 0.1 after), max-unpooling in the decoder and a
final transposed convolution. About 0.36 M parameters.

Departures from the paper, each for a reason:
- Spatial dropout is `Dropout(axes=(2, 3))`: one mask per sample and channel, rescaled by 1/(1-p)
  (the seed tutorial shared one mask over the batch and did not rescale).
- MXNet has no max-unpooling with indices. `_unpool` rebuilds it exactly from the encoder's
  pre-pooling features: a position is kept where it equals the max of its 2x2 window.
- Channel concatenations whose first input is not a multiple of 16 channels (the initial block's
  15 conv + 1 pooled channels of a grey-scale input) kill MXNet 1.9.1 with SIGFPE in
  MKLDNNConcatBackward when training hybridized. `_channel_concat` builds such concatenations from
  zero-padding along the channel axis and an elementwise add instead, which is the same function
  and never reaches oneDNN's concat. tests/engine/test_models.py trains a step to cover it.
- The upsampling bottleneck's main-branch 1x1 conv + BN and its projection 1x1 conv + BN are one
  conv and one BN with out + internal channels, sliced apart: the same function (BN is per
  channel), one fewer conv, and MXNet 1.9.1's oneDNN subgraph pass (`hybridize(backend="MKLDNN")`)
  otherwise swaps the two convs' weights. With the PReLUs in the graph that backend made ENet 8x
  slower (each PReLU, a non-oneDNN op, forced layout reorders); after `fuse_for_inference` (below)
  it is what makes ENet fast.
- `skips=True` (the default) adds three small paths the paper does not have, because the paper's
  decoder sees full-resolution detail only through the unpooling masks and thin sulcal CSF suffered
  (CSF Dice 0.71 on untrained slices of the training brain after an hour, U-Net 0.90): LinkNet-style
  (Chaurasia & Culurciello 2017) 1x1-conv skips from the encoder's 1/4- and 1/2-resolution features
  into the decoder stages there, and a full-resolution refinement of the logits from the input
  intensities (3x3 convs, 8 hidden channels). Their output convolutions start at zero, so an ENet
  trained without them is the same function when loaded into one with them. About 5 k parameters
  and 1% of the FLOPs. `skips=False` is the paper's network.

Inference: `ENet.fuse_for_inference()` rewrites the trained network into the same function built
from operators oneDNN runs fast. MXNet 1.9.1's per-channel PReLU (`LeakyReLU(act_type="prelu")`)
is a plain broadcast kernel, 30x slower than a ReLU here and 42% of ENet's inference time; spatial
dropout in predict mode still copies its input (15%). With every slope a in [0, 1] (the trained
ones are 0.06-0.61), prelu(x) = a*x + relu((1-a)*x); both scalings are inference BatchNorms,
into which the BatchNorm before the PReLU folds, so conv -> BN -> PReLU becomes conv -> two
BatchNorms -> ReLU -> add. Dropout is dropped. A layer with a slope outside [0, 1] keeps its PReLU.
"""
from __future__ import annotations

from engine.core.classes import NUM_CLASSES
from engine.core.mx_env import get_mx

mx = get_mx()
nn = mx.gluon.nn


def _pad_channels(F, x, before: int, after: int):
    """Zero-pad axis 1 of NCHW. MXNet's pad only pads the last two axes, so move C there."""
    x = F.transpose(x, axes=(0, 2, 1, 3))  # N H C W
    x = F.pad(x, mode="constant", constant_value=0, pad_width=(0, 0, 0, 0, before, after, 0, 0))
    return F.transpose(x, axes=(0, 2, 1, 3))


def _channel_concat(F, a, a_channels: int, b, b_channels: int):
    """concat([a, b], dim=1) without oneDNN's concat (see module docstring)."""
    return F.elemwise_add(_pad_channels(F, a, 0, b_channels), _pad_channels(F, b, a_channels, 0))


class _Identity(mx.gluon.HybridBlock):
    def hybrid_forward(self, F, x):
        return x


# BatchNorm with mean 0 and variance 1 - eps is a plain per-channel scale by its gamma (plus beta):
# both PReLU rewrites below use it so that oneDNN does the per-channel arithmetic.
_SCALE_EPS = 1e-5


class FusedPReLU(mx.gluon.HybridBlock):
    """Inference-only prelu(bn(x)) (or prelu(x) when bn is None) as BN_u(x) + relu(BN_v(x)):
    BN_u scales by a, BN_v by (1 - a), each after the folded BatchNorm. Needs every a in [0, 1]."""

    def __init__(self, prelu, bn=None, **kw):
        import numpy as np

        super().__init__(**kw)
        a = prelu.alpha.data().asnumpy().astype(np.float64)
        c = a.size
        if bn is None:
            gamma, beta, mean, var = np.ones(c), np.zeros(c), np.zeros(c), np.full(c, 1 - _SCALE_EPS)
            self.eps = _SCALE_EPS
        else:
            gamma, beta, mean, var = (p.data().asnumpy().astype(np.float64)
                                      for p in (bn.gamma, bn.beta, bn.running_mean, bn.running_var))
            self.eps = float(bn._kwargs["eps"])
        values = {"u_gamma": gamma * a, "u_beta": beta * a, "v_gamma": gamma * (1 - a), "v_beta": beta * (1 - a),
                  "mean": mean, "var": var}
        ctx = prelu.alpha.list_ctx()
        with self.name_scope():
            for name, value in values.items():
                data = mx.nd.array(value.astype(np.float32), ctx=ctx[0])
                const = self.params.get_constant(name, data)
                # loaded as load_parameters does, not through the Constant's initializer (a zero
                # array, then a copy, per constant): ENet's 82 sites 0.38 -> 0.26 s at every start (2026-12-04)
                const._load_init(data, ctx)
                setattr(self, name, const)

    def hybrid_forward(self, F, x, u_gamma, u_beta, v_gamma, v_beta, mean, var):
        kw = dict(eps=self.eps, fix_gamma=False, use_global_stats=True)
        u = F.BatchNorm(x, u_gamma, u_beta, mean, var, **kw)
        v = F.BatchNorm(x, v_gamma, v_beta, mean, var, **kw)
        return F.elemwise_add(u, F.Activation(v, act_type="relu"))


class TrainablePReLU(mx.gluon.HybridBlock):
    """PReLU as a*x + (1-a)*relu(x), exactly PReLU for any slope a, built from oneDNN's BatchNorm
    (as a per-channel scale with fixed statistics, so its gamma gradient is the slope's) and ReLU:
    forward + backward 2.6x faster than MXNet 1.9.1's prelu kernel at ENet's sizes. It shares the
    nn.PReLU's `alpha` Parameter and leaves its fixed statistics out of saved files, so parameter
    files are the same with either (ENet.use_fast_prelu)."""

    def __init__(self, prelu, **kw):
        super().__init__(prefix=prelu.prefix, params=prelu.params, **kw)
        self.alpha = self.params.get("alpha")  # the PReLU's own Parameter, via the shared dict
        assert self.alpha is prelu.alpha
        c = prelu.alpha.shape[0]
        ctx = prelu.alpha.list_ctx()
        self.stat_mean = self.params.get_constant("fast_mean", mx.nd.zeros(c))
        self.stat_var = self.params.get_constant("fast_var", mx.nd.ones(c) * (1 - _SCALE_EPS))
        for param in (self.stat_mean, self.stat_var):
            param.initialize(ctx=ctx)

    def _collect_params_with_prefix(self, prefix=""):
        return {(prefix + "." if prefix else "") + "alpha": self.alpha}

    def hybrid_forward(self, F, x, alpha, stat_mean, stat_var):
        kw = dict(eps=_SCALE_EPS, fix_gamma=False, use_global_stats=True)
        u = F.BatchNorm(x, alpha, stat_mean, stat_mean, stat_var, **kw)
        w = F.BatchNorm(F.Activation(x, act_type="relu"), 1 - alpha, stat_mean, stat_mean, stat_var, **kw)
        return F.elemwise_add(u, w)


def _replace_child(owner, name: str, block) -> None:
    """Swap a child block for one of another type (Gluon's __setattr__ refuses type changes)."""
    owner.register_child(block, name)
    object.__setattr__(owner, name, block)


def _fuse(owner, bn_name: str | None, act_name: str) -> None:
    """Replace owner.<act_name> (a PReLU) by a FusedPReLU, folding owner.<bn_name> into it."""
    act = getattr(owner, act_name)
    alpha = act.alpha.data().asnumpy()
    if alpha.min() < 0 or alpha.max() > 1:
        return  # the identity needs 0 <= a <= 1: keep the slow, exact PReLU
    bn = getattr(owner, bn_name) if bn_name else None
    _replace_child(owner, act_name, FusedPReLU(act, bn, prefix=act.prefix + "fused_"))
    if bn_name:
        _replace_child(owner, bn_name, _Identity(prefix=bn.prefix + "folded_"))


def _unpool(F, x, pre_pool):
    """Max-unpool x (N,C,H,W) to (N,C,2H,2W) at the argmax positions of pre_pool's 2x2 windows."""
    pooled = F.Pooling(pre_pool, kernel=(2, 2), stride=(2, 2), pool_type="max")
    mask = F.BlockGrad(F.broadcast_equal(pre_pool, F.UpSampling(pooled, scale=2, sample_type="nearest")))
    return F.elemwise_mul(F.UpSampling(x, scale=2, sample_type="nearest"), mask)


class InitialBlock(mx.gluon.HybridBlock):
    def __init__(self, in_channels: int = 1, out_channels: int = 16, **kw):
        super().__init__(**kw)
        self.conv_channels = out_channels - in_channels
        self.in_channels = in_channels
        self.conv = nn.Conv2D(self.conv_channels, 3, strides=2, padding=1, use_bias=False)
        self.bn = nn.BatchNorm()
        self.act = nn.PReLU(in_channels=out_channels)

    def hybrid_forward(self, F, x):
        conv = self.conv(x)
        pool = F.Pooling(x, kernel=(2, 2), stride=(2, 2), pool_type="max")
        if self.conv_channels % 16 == 0:
            y = F.concat(conv, pool, dim=1)
        else:
            y = _channel_concat(F, conv, self.conv_channels, pool, self.in_channels)
        return self.act(self.bn(y))


class Bottleneck(mx.gluon.HybridBlock):
    """kind: regular | dilated | asymmetric | down | up."""

    def __init__(self, in_channels: int, out_channels: int, kind: str = "regular", dilation: int = 1,
                 dropout: float = 0.1, **kw):
        super().__init__(**kw)
        self.kind = kind
        self.in_channels = in_channels
        self.out_channels = out_channels
        self.dropout = dropout
        internal = out_channels // 4 if kind != "up" else in_channels // 4
        with self.name_scope():
            if kind == "down":
                self.proj = nn.Conv2D(internal, 2, strides=2, use_bias=False)
            elif kind == "up":
                # The main branch's 1x1 conv + BN and the projection's 1x1 conv + BN read the same
                # input: one conv with out + internal filters and one BN (per channel) compute both
                # exactly, and avoid a oneDNN fusion bug with two conv+BN pairs on one input.
                self.proj = nn.Conv2D(out_channels + internal, 1, use_bias=False)
            else:
                self.proj = nn.Conv2D(internal, 1, use_bias=False)
            self.bn1 = nn.BatchNorm()
            self.act1 = nn.PReLU(in_channels=internal)
            if kind == "asymmetric":
                self.conv = nn.HybridSequential()
                self.conv.add(nn.Conv2D(internal, (5, 1), padding=(2, 0), use_bias=False),
                              nn.Conv2D(internal, (1, 5), padding=(0, 2), use_bias=False))
            elif kind == "up":
                self.conv = nn.Conv2DTranspose(internal, 2, strides=2, use_bias=False)
            else:
                self.conv = nn.Conv2D(internal, 3, padding=dilation, dilation=dilation, use_bias=False)
            self.bn2 = nn.BatchNorm()
            self.act2 = nn.PReLU(in_channels=internal)
            self.expand = nn.Conv2D(out_channels, 1, use_bias=False)
            self.bn3 = nn.BatchNorm()
            self.act_out = nn.PReLU(in_channels=out_channels)

    def hybrid_forward(self, F, x, pre_pool=None):
        if self.kind == "up":
            both = self.bn1(self.proj(x))
            main = F.slice_axis(both, axis=1, begin=0, end=self.out_channels)
            ext = self.act1(F.slice_axis(both, axis=1, begin=self.out_channels, end=None))
        else:
            ext = self.act1(self.bn1(self.proj(x)))
        ext = self.act2(self.bn2(self.conv(ext)))
        ext = self.bn3(self.expand(ext))
        if self.dropout > 0:
            ext = F.Dropout(ext, p=self.dropout, axes=(2, 3))  # spatial: mask per sample & channel
        if self.kind == "down":
            main = F.Pooling(x, kernel=(2, 2), stride=(2, 2), pool_type="max")
            # zero channels up to out_channels; a plain concat is safe here because the first
            # input (16 or 64 channels) is a multiple of 16 (see the module docstring)
            zeros = F.zeros_like(F.slice_axis(ext, axis=1, begin=0, end=self.out_channels - self.in_channels))
            if self.in_channels % 16 == 0:
                main = F.concat(main, zeros, dim=1)
            else:
                main = _pad_channels(F, main, 0, self.out_channels - self.in_channels)
        elif self.kind == "up":
            main = _unpool(F, main, pre_pool)
        else:
            main = x
        return self.act_out(F.elemwise_add(main, ext))


class ENet(mx.gluon.HybridBlock):
    """Input (N, in_channels, H, W), H and W multiples of 8; output (N, classes, H, W) logits."""

    multiple = 8

    def __init__(self, classes: int = NUM_CLASSES, in_channels: int = 1, skips: bool = True,
                 width: int = 64, repeats: int = 2, **kw):
        """width: stage 1's channels (stages 2-3 have twice as many); repeats: how many times the
        eight bottlenecks of stages 2-3 are stacked. The defaults are the paper's network; smaller
        ones serve as a model's secondary planes' network (engine/infer/inference.py)."""
        super().__init__(**kw)
        if width % 16 or width < 32 or repeats < 1:
            raise ValueError(f"ENet width must be a multiple of 16 from 32 (got {width}), repeats >= 1 (got {repeats})")
        self.skips = skips
        w1, w2 = width, 2 * width
        with self.name_scope():
            self.initial = InitialBlock(in_channels, 16)
            self.b10 = Bottleneck(16, w1, "down", dropout=0.01)
            self.stage1 = nn.HybridSequential()
            for _ in range(4):
                self.stage1.add(Bottleneck(w1, w1, dropout=0.01))
            self.b20 = Bottleneck(w1, w2, "down")
            self.stage23 = nn.HybridSequential()
            for _ in range(repeats):
                self.stage23.add(
                    Bottleneck(w2, w2), Bottleneck(w2, w2, "dilated", 2),
                    Bottleneck(w2, w2, "asymmetric"), Bottleneck(w2, w2, "dilated", 4),
                    Bottleneck(w2, w2), Bottleneck(w2, w2, "dilated", 8),
                    Bottleneck(w2, w2, "asymmetric"), Bottleneck(w2, w2, "dilated", 16),
                )
            self.b40 = Bottleneck(w2, w1, "up")
            self.stage4 = nn.HybridSequential()
            self.stage4.add(Bottleneck(w1, w1), Bottleneck(w1, w1))
            self.b50 = Bottleneck(w1, 16, "up")
            self.stage5 = nn.HybridSequential()
            self.stage5.add(Bottleneck(16, 16))
            self.fullconv = nn.Conv2DTranspose(classes, 2, strides=2)
            if skips:
                zero = mx.init.Zero()
                self.skip4 = nn.Conv2D(w1, 1, use_bias=False, weight_initializer=zero)
                self.skip5 = nn.Conv2D(16, 1, use_bias=False, weight_initializer=zero)
                self.refine_logits = nn.Conv2D(8, 3, padding=1, use_bias=False)
                self.refine_image = nn.Conv2D(8, 3, padding=1)
                self.refine_out = nn.Conv2D(classes, 1, use_bias=False, weight_initializer=zero)

    def _prelu_sites(self) -> list[tuple]:
        """(owner block, name of the BatchNorm right before the PReLU or None, name of the PReLU)."""
        sites = [(self.initial, "bn", "act")]
        for block in self.collect_blocks():
            # the up-bottleneck slices its first BatchNorm's output before the PReLU: not foldable
            sites += [(block, "bn1" if block.kind != "up" else None, "act1"), (block, "bn2", "act2"),
                      (block, None, "act_out")]
        return sites

    def fuse_for_inference(self) -> "ENet":
        """Rewrite in place into the same function with faster operators (module docstring).
        The result is for inference only: it has no dropout and its fused layers do not train."""
        for block in self.collect_blocks():
            block.dropout = 0.0
        for owner, bn_name, act_name in self._prelu_sites():
            _fuse(owner, bn_name, act_name)
        return self

    def use_fast_prelu(self) -> "ENet":
        """Swap every PReLU for a TrainablePReLU (same function and parameters, faster to train).
        Call after the parameters are initialised or loaded, before hybridizing."""
        for owner, _, name in self._prelu_sites():
            act = getattr(owner, name)
            if isinstance(act, nn.PReLU):
                _replace_child(owner, name, TrainablePReLU(act))
        return self

    def collect_blocks(self):
        return [self.b10, *self.stage1, self.b20, *self.stage23, self.b40, *self.stage4, self.b50, *self.stage5]

    def hybrid_forward(self, F, x):
        x0 = self.initial(x)
        x1 = self.stage1(self.b10(x0))
        x2 = self.stage23(self.b20(x1))
        if not self.skips:
            y = self.stage4(self.b40(x2, x1))
            y = self.stage5(self.b50(y, x0))
            return self.fullconv(y)
        # skip first in the adds: the other order makes MXNet 1.9.1's oneDNN subgraph pass (conv +
        # sum fusion) mix up the weights of the two convolutions reading x0 (or x1) once the input
        # shape changes (tests/engine/test_models.py covers it)
        y = self.stage4(F.elemwise_add(self.skip4(x1), self.b40(x2, x1)))
        y = self.stage5(F.elemwise_add(self.skip5(x0), self.b50(y, x0)))
        logits = self.fullconv(y)
        hidden = F.Activation(F.elemwise_add(self.refine_logits(logits), self.refine_image(x)), act_type="relu")
        return F.elemwise_add(logits, self.refine_out(hidden))
