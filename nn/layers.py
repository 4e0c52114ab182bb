"""CIMLinear / CIMConv2d: torch's constructor signature plus one ``cim_config``.

Forward on the simulated chip (bit-serial inputs, tiled crossbars, per-column ADCs with the chip's static
threshold shifts and optional per-inference noise); backward in software: the layer returns
``y_ideal + (y_cim - y_ideal).detach()``, so gradients are those of the quantized digital layer.

ADC mapping (deterministic, inspectable with :meth:`adc_map`): a layer's physical columns are ordered
(row tile, weight slice, polarity, output channel); every ``columns_per_adc`` consecutive columns of a
tile share one ADC; ADCs are numbered from the layer's ``adc_base`` (set by :func:`nn.convert.convert`)
and wrap around the die's ``n_macros * adcs_per_macro`` physical ADCs, i.e. a network larger than the
die reuses the die's ADCs (time-multiplexed weight loading). Flat index f -> (macro_id, adc_id) =
divmod(f, adcs_per_macro).
"""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import Any, cast

import numpy as np
import torch
import torch.nn.functional as F

from nn import fused
from nn.adc import adc_tables
from nn.config import CIMConfig, CIMConfigError
from nn.engine import cim_matmul, magnitude_cells, reading_share, weight_cells, weight_slices
from nn.quant import quantize_input, quantize_weight, weight_scale

_CIM_STATE = ("adc_shift", "act_max")  # state a CIM layer adds to its torch twin


class _CIMMixin:
    """Shared state and engine call of CIM layers (weight is [out, in_features_unrolled])."""

    cim_config: CIMConfig
    adc_shift: torch.Tensor
    weight: torch.Tensor

    def _init_cim(self, cim_config: CIMConfig | None, k: int, n: int) -> None:
        self.cim_config = cim_config or CIMConfig()
        cfg = self.cim_config
        self._k, self._n = k, n
        self.adc_base = 0
        self.noise_seed: int | None = None
        self._generator: torch.Generator | None = None
        self._table_cache: dict = {}  # ADC lookup tables of the loaded chip (rebuilt when adc_shift changes)
        tiles = math.ceil(k / cfg.array.rows)
        slices = weight_slices(cfg.quant.weight_bits, cfg.array.cell_bits)
        # Per-chip static threshold shifts (partial-sum units), one per physical ADC threshold: a buffer,
        # so it travels with state_dict() and .to(); loading another chip changes only this.
        self.register_buffer(  # type: ignore[attr-defined]
            "adc_shift", torch.zeros(tiles, slices, cfg.array.polarities, n, cfg.adc.n_thresholds))
        # The layer's activation clip value (PACT): learned with the weights, starts at quant.input_max.
        self.act_max = torch.nn.Parameter(torch.tensor(float(cfg.quant.input_max)))
        self.digital = False  # True: the integer digital layer (ideal, lossless ADC), no engine call
        self.always_digital = False  # True: digital whatever set_digital says (ArrayConfig.first_layer_digital)
        # None: the weight scale follows the weights (training); a tensor: the scale the cells were
        # programmed with, fixed (weight attacks flip stored bits without rescaling the layer)
        self.frozen_weight_scale: torch.Tensor | None = None
        self._scale_cache: tuple[Any, torch.Tensor | None] = (None, None)
        self._cells_cache: tuple[Any, torch.Tensor, torch.Tensor] | None = None
        self._offsets_seen: tuple[torch.Tensor, int, bool] | None = None
        self._stored_key: tuple[tuple[torch.Tensor, int], ...] | None = None
        self.stored_magnitudes: tuple[torch.Tensor, torch.Tensor] | None = None
        """(w+, w-) the cells of a programmed chip hold, integers shaped like the weight, when they are not the
        canonical split of the weights (bit flips: :class:`nn.attacks.StoredBits` sets them). The chip forward
        reads them while w+ - w- equals the quantized weights; any other change of the weights leaves them
        stale, and they are ignored."""

    @property
    def has_offsets(self) -> bool:
        """True when the loaded chip shifts any threshold (derived from the buffer, so it survives
        ``load_state_dict``). Remembered for the buffer object at its version (every in-place write bumps it, a
        new buffer is another object): on an accelerator the check is a host sync, so it runs once per chip
        load, not once per layer per forward."""
        buf = self.adc_shift
        seen = self._offsets_seen
        if seen is None or seen[0] is not buf or seen[1] != buf._version:
            seen = (buf, buf._version, bool(buf.any()))
            self._offsets_seen = seen
        return seen[2]

    def adc_map(self) -> np.ndarray:
        """Flat physical ADC index [T, S, P, N] (P = ``array.polarities``) of every column of this layer."""
        t, s, p, n, _ = self.adc_shift.shape
        a = self.cim_config.array
        col = np.arange(s * p * n).reshape(s, p, n)
        per_tile = math.ceil(s * p * n / a.columns_per_adc)
        flat = self.adc_base + np.arange(t)[:, None, None, None] * per_tile + (col // a.columns_per_adc)[None]
        return flat % (a.n_macros * a.adcs_per_macro)

    def n_adcs(self) -> int:
        """Logical ADCs this layer uses (before wrapping onto the die)."""
        t, s, p, n, _ = self.adc_shift.shape
        return t * math.ceil(s * p * n / self.cim_config.array.columns_per_adc)

    def load_adc_offsets(self, shifts_lsb: np.ndarray | torch.Tensor) -> None:
        """Load a chip: ``shifts_lsb`` [n_macros, adcs_per_macro, n_thresholds] in ADC LSB units.

        One LSB is one level step of this layer's ADC, so a threshold j moves by shift * step partial sums.
        """
        a = self.cim_config.array
        arr = torch.as_tensor(np.asarray(shifts_lsb), dtype=self.adc_shift.dtype)
        want = (a.n_macros, a.adcs_per_macro, self.cim_config.adc.n_thresholds)
        if tuple(arr.shape) != want:
            raise CIMConfigError(f"offset table geometry {tuple(arr.shape)} does not match the mapping {want} "
                                 "(n_macros, adcs_per_macro, n_thresholds)")
        if self.cim_config.adc.noise_table is not None:
            raise CIMConfigError("this layer reads through a measured noise table, which already holds its chip's "
                                 "offsets; use a threshold ADC (noise_table=None) to load an offset table")
        _, _, step = adc_tables(self.cim_config.adc, *self.cim_config.psum_range, "cpu", torch.float64)
        flat = arr.reshape(-1, want[2]) * step
        idx = torch.as_tensor(self.adc_map().reshape(-1))
        self.adc_shift.copy_(flat[idx].reshape(self.adc_shift.shape))

    def clear_adc_offsets(self) -> None:
        self.adc_shift.zero_()

    def set_noise_seed(self, seed: int | None) -> None:
        """Seed the per-inference noise stream (None: torch's global RNG)."""
        self.noise_seed = seed
        self._generator = None

    def _gen(self, device: torch.device) -> torch.Generator | None:
        if self.noise_seed is None:
            return None
        if self._generator is None or self._generator.device != device:
            self._generator = torch.Generator(device=device)
            self._generator.manual_seed(self.noise_seed)
        return self._generator

    def quantize(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
        """(x_int, x scale, w_int [N, K], w scale): the integers the array sees, with STE/PACT gradients.

        ``x`` is quantized elementwise (any shape); zero padding stays zero, so quantize-then-unfold equals
        unfold-then-quantize."""
        q = self.cim_config.quant
        x_int, sx = quantize_input(x, q.input_bits, self.act_max, q.input_signed)
        w = self.weight.reshape(self._n, self._k)
        w_int, sw = quantize_weight(w, q.weight_bits, self._weight_scale(w))
        return x_int, sx, w_int, sw

    def _weight_scale(self, w: torch.Tensor) -> torch.Tensor:
        """The weight scale: a programmed chip's fixed scale, else the MSE-optimal one, recomputed only when
        the weights change (their version counter; optimizers update in place)."""
        if self.frozen_weight_scale is not None:
            return self.frozen_weight_scale
        key = (self.weight._version, self.weight.data_ptr(), self.weight.dtype)
        cached_key, scale = self._scale_cache
        if cached_key != key or scale is None:
            scale = weight_scale(w, self.cim_config.quant.weight_bits)
            self._scale_cache = (key, scale)
        return scale

    def _cells(self, w_int: torch.Tensor) -> torch.Tensor:
        """The cells [S, 2, K, N] that store ``w_int``: the same tensor object for as long as the integer weights
        are equal (checked by content, one compare, so no way of changing the weights can leave stale cells).
        The engine keys its packed copy of the weights on that object: a chip read many times with unchanged
        weights (attacks, evaluations, BFA trials of other layers) is programmed once. Only on the CPU: on an
        accelerator the compare would cost a host sync per layer, and only the CPU engine keeps a packed copy."""
        w = w_int.detach()
        bits = (self.cim_config.quant.weight_bits, self.cim_config.array.cell_bits)
        mags = self._magnitudes(w)
        if w.device.type != "cpu":
            return weight_cells(w, *bits) if mags is None else magnitude_cells(mags, *bits)
        key = w if mags is None else mags  # what the cells are made of ([N, K] or [2, N, K]: never confused)
        hit = self._cells_cache
        if (hit is not None and hit[0] == bits and hit[1].shape == key.shape and hit[1].dtype == key.dtype
                and hit[1].device == key.device and torch.equal(hit[1], key)):
            return hit[2]
        cells = weight_cells(w, *bits) if mags is None else magnitude_cells(mags, *bits)
        self._cells_cache = (bits, key.clone(), cells)
        return cells

    def _magnitudes(self, w: torch.Tensor) -> torch.Tensor | None:
        """[2, N, K] the stored (w+, w-) of the integer weights ``w`` [N, K], or None: canonical cells (none
        stored, or stale: they no longer add up to the weights)."""
        if self.stored_magnitudes is None:
            return None
        pos, neg = (t.reshape(self._n, self._k).to(device=w.device, dtype=w.dtype) for t in self.stored_magnitudes)
        if self._stored_fresh():
            return torch.stack([pos, neg])  # written with the weights they add up to, both untouched since
        return torch.stack([pos, neg]) if torch.equal(pos - neg, w) else None

    def store_magnitudes(self, pos: torch.Tensor, neg: torch.Tensor) -> None:
        """Program cells (w+, w-) = (``pos``, ``neg``) (integers shaped like the weight) that add up to the
        integer weights the layer holds now (the caller has just written them). Until the weight, its frozen
        scale or the cells change, the forward trusts them without a compare (a host sync per layer on an
        accelerator); after any change it compares, and ignores them once stale."""
        self.stored_magnitudes = (pos, neg)
        parts = self._stored_parts()
        self._stored_key = None if parts is None else tuple((t, t._version) for t in parts)

    def _stored_parts(self) -> tuple[torch.Tensor, ...] | None:
        """What the integer weights and the stored cells are made of: weight, frozen scale, w+, w-."""
        if self.stored_magnitudes is None or self.frozen_weight_scale is None:
            return None
        return (self.weight, self.frozen_weight_scale, *self.stored_magnitudes)

    def _stored_fresh(self) -> bool:
        """True when every part is the object :meth:`store_magnitudes` saw, at the version it saw (the key holds
        the objects themselves, so no identity is reused)."""
        parts, key = self._stored_parts(), self._stored_key
        return (parts is not None and key is not None and len(parts) == len(key)
                and all(p is k and p._version == v for p, (k, v) in zip(parts, key, strict=True)))

    def chip_matmul(self, x_int: torch.Tensor, w_int: torch.Tensor) -> torch.Tensor:
        """Integer outputs [B, N] of the simulated crossbars for integer inputs [B, K] (no gradient)."""
        if x_int.shape[-1] != self._k:
            raise CIMConfigError(f"{type(self).__name__}: input has {x_int.shape[-1]} features, expected {self._k}")
        cells = self._cells(w_int)
        shift = self.adc_shift if self.has_offsets else None
        with torch.no_grad():
            return cim_matmul(x_int.detach(), cells, self.cim_config, shift, self._gen(x_int.device),
                              self._table_cache)

    def integer_forward(self, x2d: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """(y_cim, y_ideal, scale): integer-domain CIM and digital outputs [B, N] and the output scale."""
        x_int, sx, w_int, sw = self.quantize(x2d)
        return self.chip_matmul(x_int, w_int), x_int @ w_int.t(), sx * sw

    def _windowed(self, rows: torch.Tensor, w_int: torch.Tensor) -> torch.Tensor:
        """[B, N]: every row tile's digital dot product of ``rows`` [B, K] and ``w_int`` [N, K], weighted by the share
        of its readings inside the ADC's window (``quant.psum_ste_window``) or by their mean soft-staircase slope
        (``quant.psum_ste_smooth``): the gradient path of those estimators; its value is never used."""
        cfg = self.cim_config
        share = reading_share(rows, self._cells(w_int), cfg, cfg.quant.psum_ste_window,
                              cfg.quant.psum_ste_smooth)  # [B, N, T]
        tiles, r = share.shape[-1], cfg.array.rows
        pad = tiles * r - self._k
        xp = F.pad(rows, (0, pad)).reshape(-1, tiles, r)
        wp = F.pad(w_int, (0, pad)).reshape(self._n, tiles, r)
        return (torch.einsum("btr,ntr->bnt", xp, wp) * share).sum(-1)

    def _on_chip(self, ideal: Callable[[], torch.Tensor], chip: Callable[[], torch.Tensor],
                 *inputs: torch.Tensor, windowed: Callable[[], torch.Tensor] | None = None) -> torch.Tensor:
        """Forward value of the chip, gradient of the digital layer (straight through); digital mode skips the
        chip, and a forward that no gradient can reach (no grad mode, or no input needing one) skips the
        digital layer: both are integer-valued, so ``ideal + (chip - ideal)`` is ``chip`` exactly. With
        ``quant.psum_ste_window`` or ``quant.psum_ste_smooth`` the gradient is ``windowed``'s instead, added as
        ``g - g.detach()`` (exactly 0)."""
        if self.digital:
            return ideal()
        if not torch.is_grad_enabled() or not any(t.requires_grad for t in inputs):
            return chip()
        q = self.cim_config.quant
        if windowed is not None and (q.psum_ste_window > 0 or q.psum_ste_smooth > 0):
            g = windowed()
            return chip() + (g - g.detach())
        y_ideal = ideal()
        return y_ideal + (chip() - y_ideal).detach()


def _out_size(size: int, kernel: int, stride: int, padding: int, dilation: int) -> int:
    return (size + 2 * padding - dilation * (kernel - 1) - 1) // stride + 1


class CIMLinear(_CIMMixin, torch.nn.Linear):
    """``torch.nn.Linear`` computed on CIM crossbars."""

    def __init__(self, in_features: int, out_features: int, bias: bool = True, device=None, dtype=None,
                 cim_config: CIMConfig | None = None) -> None:
        torch.nn.Linear.__init__(self, in_features, out_features, bias, device, dtype)
        self._init_cim(cim_config, in_features, out_features)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if x.shape[-1] != self._k:
            raise CIMConfigError(f"CIMLinear: input has {x.shape[-1]} features, expected {self._k}")
        lead = x.shape[:-1]
        x_int, sx, w_int, sw = self.quantize(x.reshape(-1, x.shape[-1]))
        y = self._on_chip(lambda: x_int @ w_int.t(), lambda: self.chip_matmul(x_int, w_int), x_int, w_int,
                          windowed=lambda: self._windowed(x_int, w_int)) * (sx * sw)
        if self.bias is not None:
            y = y + self.bias
        return y.reshape(*lead, self.out_features)

    @classmethod
    def from_float(cls, m: torch.nn.Linear, cim_config: CIMConfig | None = None) -> CIMLinear:
        out = cls(m.in_features, m.out_features, m.bias is not None, m.weight.device, m.weight.dtype, cim_config)
        out.load_state_dict(m.state_dict(), strict=False)
        return out

    def to_float(self) -> torch.nn.Linear:
        m = torch.nn.Linear(self.in_features, self.out_features, self.bias is not None,
                            self.weight.device, self.weight.dtype)
        m.load_state_dict({k: v for k, v in self.state_dict().items() if k not in _CIM_STATE})
        return m


class CIMConv2d(_CIMMixin, torch.nn.Conv2d):
    """``torch.nn.Conv2d`` (zero padding, groups=1) computed on CIM crossbars via im2col."""

    def __init__(self, in_channels: int, out_channels: int, kernel_size, stride=1, padding=0, dilation=1,
                 groups: int = 1, bias: bool = True, padding_mode: Any = "zeros", device=None, dtype=None,
                 cim_config: CIMConfig | None = None) -> None:
        torch.nn.Conv2d.__init__(self, in_channels, out_channels, kernel_size, stride, padding, dilation, groups,
                                 bias, padding_mode, device, dtype)
        if groups != 1 or padding_mode != "zeros" or isinstance(self.padding, str):
            raise CIMConfigError("CIMConv2d supports groups=1, padding_mode='zeros' and numeric padding")
        kh, kw = self.kernel_size
        self._init_cim(cim_config, in_channels * kh * kw, out_channels)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if x.dim() != 4 or x.shape[1] != self.in_channels:
            raise CIMConfigError(f"CIMConv2d expects [B, {self.in_channels}, H, W], got {tuple(x.shape)}")
        pad = cast(tuple[int, int], self.padding)
        x_int, sx, w_int, sw = self.quantize(x)

        def digital() -> torch.Tensor:
            return F.conv2d(x_int, w_int.view_as(self.weight), None, self.stride, pad, self.dilation)

        def chip() -> torch.Tensor:
            if fused.usable(self.cim_config, x_int):  # windows packed straight from the input, no im2col
                cells = self._cells(w_int)
                shift = self.adc_shift if self.has_offsets else None
                with torch.no_grad():
                    return fused.conv_fused(x_int.detach(), cells, self.cim_config, shift, self._gen(x.device),
                                            self._table_cache, cast(Any, self.kernel_size), cast(Any, self.stride),
                                            pad, cast(Any, self.dilation))
            return on_windows(x_int.detach(), lambda rows: self.chip_matmul(rows, w_int))

        def on_windows(t: torch.Tensor, fn: Callable[[torch.Tensor], torch.Tensor]) -> torch.Tensor:
            """``fn`` on the im2col rows [B * L, K] of ``t``, its [B * L, N] result laid out as [B, N, Ho, Wo]."""
            cols = F.unfold(t, self.kernel_size, self.dilation, pad, self.stride)  # [B, K, L]
            b, n = x.shape[0], self.out_channels
            ho, wo = (_out_size(x.shape[2 + d], self.kernel_size[d], self.stride[d], pad[d], self.dilation[d])
                      for d in (0, 1))
            y = fn(cols.transpose(1, 2).reshape(-1, self._k))
            return y.reshape(b, ho * wo, n).transpose(1, 2).reshape(b, n, ho, wo)

        def windowed() -> torch.Tensor:
            return on_windows(x_int, lambda rows: self._windowed(rows, w_int))

        y = self._on_chip(digital, chip, x_int, w_int, windowed=windowed) * (sx * sw)
        if self.bias is not None:
            y = y + self.bias.view(1, -1, 1, 1)
        return y

    @classmethod
    def from_float(cls, m: torch.nn.Conv2d, cim_config: CIMConfig | None = None) -> CIMConv2d:
        k: Any = m.kernel_size
        out = cls(m.in_channels, m.out_channels, k, stride=cast(Any, m.stride), padding=cast(Any, m.padding),
                  dilation=cast(Any, m.dilation), groups=m.groups, bias=m.bias is not None,
                  padding_mode=m.padding_mode, device=m.weight.device, dtype=m.weight.dtype, cim_config=cim_config)
        out.load_state_dict(m.state_dict(), strict=False)
        return out

    def to_float(self) -> torch.nn.Conv2d:
        k: Any = self.kernel_size
        m = torch.nn.Conv2d(self.in_channels, self.out_channels, k, stride=cast(Any, self.stride),
                            padding=cast(Any, self.padding), dilation=cast(Any, self.dilation), groups=self.groups,
                            bias=self.bias is not None, padding_mode=self.padding_mode,
                            device=self.weight.device, dtype=self.weight.dtype)
        m.load_state_dict({k: v for k, v in self.state_dict().items() if k not in _CIM_STATE})
        return m
