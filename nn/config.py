"""CIM simulator configuration: ADC, array and quantization parameters (frozen, validated dataclasses)."""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, field
from typing import Any


class CIMConfigError(ValueError):
    """A CIM configuration value is invalid."""


def _positive_int(name: str, value: int) -> None:
    if isinstance(value, bool) or not isinstance(value, int) or value <= 0:
        raise CIMConfigError(f"{name}={value!r} must be a positive integer")


@dataclass(frozen=True)
class ADCConfig:
    """How a column's partial sum is read: thresholds and output levels in partial-sum units.

    Uniform (default): ``2**bits`` levels 0, step, 2*step, ... with thresholds halfway (see ``psum_max``
    for the step). Explicit: ``thresholds`` and ``levels``
    (len(levels) = len(thresholds) + 1), e.g. seed 000's Table I schemes (:meth:`scheme`).
    """

    bits: int = 5
    """ADC resolution of the uniform scheme."""
    psum_max: float | None = None
    """Full-scale partial sum of the uniform scheme; None: step = ceil(largest array partial sum /
    (2**bits - 1)), at least 1 (so an ADC with enough bits reads every partial sum exactly)."""
    thresholds: tuple[float, ...] | None = None
    """Explicit decision thresholds (strictly increasing), partial-sum units."""
    levels: tuple[float, ...] | None = None
    """Explicit output value per code (len(thresholds) + 1), partial-sum units."""
    kind: str = "flash"
    """'flash' (per-comparator static offsets, ones-count encoding) or 'sar' (binary search)."""
    noise_sigma: float = 0.0
    """Per-inference Gaussian noise on the partial sum, partial-sum units (seed 000's noisy readout)."""
    noise_table: tuple[tuple[float, ...], ...] | None = None
    """Measured-noise readout (seed 000): row i is P(output code | ideal partial sum = psum_lo + i) over
    the scheme's codes; one row per integer partial sum of the column (see :attr:`CIMConfig.psum_range`).
    Each inference draws a code per reading. Exclusive with ``noise_sigma`` and with per-chip offsets (a
    measured table already contains its chip's static offsets)."""
    noise_mean: bool = False
    """Mean-field readout: every reading outputs its expected level over the read noise (``noise_sigma`` or
    ``noise_table``, with the chip's offsets) instead of a draw. Deterministic and smooth in the partial sum; no
    chip reads this way: it is an attacker's surrogate of a noisy chip (score-based attacks stall on random reads)."""

    def __post_init__(self) -> None:
        _positive_int("bits", self.bits)
        if self.kind not in ("flash", "sar"):
            raise CIMConfigError(f"ADC kind {self.kind!r}: choose 'flash' or 'sar'")
        if not math.isfinite(self.noise_sigma) or self.noise_sigma < 0:
            raise CIMConfigError(f"noise_sigma={self.noise_sigma!r} must be finite and >= 0")
        if (self.thresholds is None) != (self.levels is None):
            raise CIMConfigError("give both thresholds and levels for an explicit ADC scheme, or neither")
        if self.thresholds is not None and self.levels is not None:
            t = list(self.thresholds)
            if any(not math.isfinite(v) for v in t + list(self.levels)):
                raise CIMConfigError("ADC thresholds/levels must be finite")
            if any(b <= a for a, b in zip(t, t[1:], strict=False)):
                raise CIMConfigError(f"ADC thresholds {t} are not strictly increasing")
            if len(self.levels) != len(t) + 1:
                raise CIMConfigError(f"ADC scheme has {len(t)} thresholds but {len(self.levels)} levels; "
                                     f"need {len(t) + 1}")
        if self.noise_mean and not self.reads_noise:
            raise CIMConfigError("noise_mean reads the expected level over the read noise: give noise_sigma > 0 or a "
                                 "noise_table")
        if self.psum_max is not None and (not math.isfinite(self.psum_max) or self.psum_max <= 0):
            raise CIMConfigError(f"psum_max={self.psum_max!r} must be finite and > 0")
        if self.noise_table is not None:
            if self.noise_sigma > 0:
                raise CIMConfigError("give noise_sigma or noise_table, not both")
            n_codes = self.n_thresholds + 1
            for i, row in enumerate(self.noise_table):
                if len(row) != n_codes:
                    raise CIMConfigError(f"noise_table row {i} has {len(row)} probabilities; the ADC has "
                                         f"{n_codes} codes")
                if any(not math.isfinite(p) or p < 0 for p in row) or abs(sum(row) - 1) > 1e-6:
                    raise CIMConfigError(f"noise_table row {i} is not a probability distribution (>= 0, sum 1)")

    @staticmethod
    def scheme(name: str) -> ADCConfig:
        """Seed 000 Table I partial-sum quantization schemes for input-split networks: '1bit', '2bit', '3.5bit'."""
        if name == "1bit":
            return ADCConfig(thresholds=(0.0,), levels=(-1.0, 1.0))
        if name == "2bit":
            return ADCConfig(thresholds=(-24.0, 0.0, 24.0), levels=(-36.0, -12.0, 12.0, 36.0))
        if name == "3.5bit":
            t = tuple(float(v) for v in range(-54, 55, 12))
            return ADCConfig(thresholds=t, levels=tuple(float(v) for v in range(-60, 61, 12)))
        raise CIMConfigError(f"unknown ADC scheme {name!r}; choose '1bit', '2bit', '3.5bit'")

    @property
    def reads_noise(self) -> bool:
        """Whether a reading draws per-inference noise (Gaussian or a table); ``noise_mean`` reads its mean."""
        return self.noise_sigma > 0 or self.noise_table is not None

    @property
    def n_thresholds(self) -> int:
        return len(self.thresholds) if self.thresholds is not None else 2**self.bits - 1


@dataclass(frozen=True)
class ArrayConfig:
    """Crossbar mapping of a layer."""

    rows: int = 128
    """Rows of one sub-array: the unrolled reduction dimension is split into tiles of this many rows."""
    cell_bits: int = 1
    """Bits stored per memory cell; weight magnitudes are sliced into cells of this many bits."""
    columns_per_adc: int = 8
    """Physical columns sharing one ADC through a column mux."""
    n_macros: int = 8
    """Macros on the die (for the ADC mapping; must match the offset table's geometry)."""
    adcs_per_macro: int = 16
    """ADCs per macro (for the ADC mapping)."""
    signed_psum: bool = False
    """False (default): differential columns, w = w+ - w-; each polarity column is read by its own ADC
    (non-negative partial sums, a current-sensing ADC) and subtracted digitally. True: the ADC reads
    the signed difference of the pair (XNOR-SRAM style signed column, one ADC per pair; partial sums in
    [-psum_max, psum_max]); needed for seed 000's Table I schemes, whose thresholds straddle 0."""
    xnor: bool = False
    """Each input bit drives its row as +1 (bit 1) or -1 (bit 0), as an XNOR-SRAM row does (Yin et al., JSSC
    2020, seed 000's hardware): a signed column then reads P = sum (2x - 1) * w over the tile's rows, centred on
    zero for any input, the partial sum seed 000's Table I thresholds are set for; the digital periphery adds
    the column's weight sum S over the tile back and halves, (Q(P) + S) / 2, which is sum x * w when the ADC
    reads P exactly. A row left unused (padding) holds no weight and adds nothing. Needs ``signed_psum`` and
    bit-serial inputs. False (default): a 0 bit leaves its row off, partial sums sum x * w."""
    first_layer_digital: bool = False
    """The network's first CIM layer (the one reading the image) computes exactly, as the integer digital layer
    (no ADC, no noise), whatever the rest of the chip does: binary and low-precision networks keep that layer
    off the low-precision datapath (XNOR-Net; Hubara et al.), and its few rows (9 for a 3x3 kernel on one
    channel) give partial sums inside the zero band of seed 000's Table I schemes (``benchmarks/psum_stats.py``)."""

    def __post_init__(self) -> None:
        for name in ("rows", "cell_bits", "columns_per_adc", "n_macros", "adcs_per_macro"):
            _positive_int(name, getattr(self, name))

    @property
    def polarities(self) -> int:
        """Physical columns (each with its own ADC) per weight slice: 2 differential, 1 signed."""
        return 1 if self.signed_psum else 2


@dataclass(frozen=True)
class QuantConfig:
    """Weight and activation quantization."""

    weight_bits: int = 2
    """Signed weight bits (1: binary +-1; b >= 2: symmetric integers in [-(2^(b-1)-1), 2^(b-1)-1])."""
    input_bits: int = 8
    """Activation bits."""
    input_mode: str = "bit_serial"
    """'bit_serial': one input bit-plane per cycle, each read by the ADC and shift-added; 'multilevel':
    the whole integer drives the row at once (e.g. a DAC or pulse-width input), one ADC read per tile."""
    input_max: float = 1.0
    """Initial activation clip value alpha of every layer (inputs clip to [0, alpha]); each layer then holds
    its own alpha as the learnable parameter ``act_max`` (PACT), which training and calibration
    (:func:`nn.convert.calibrate_act_ranges`) set per layer."""
    input_signed: bool = False
    """Two's-complement inputs in [-2^(b-1), 2^(b-1)-1] (for CELU and other signed activations); the
    bit-serial MSB plane then carries weight -2^(b-1). Inputs clip to [-input_max, input_max]."""
    first_input_bits: int | None = None
    """Input bits of the network's first CIM layer, the one that reads the image (None: ``input_bits``).
    Binary networks conventionally feed the image at 8 bits (XNOR-Net, Rastegari et al. 2016): at
    ``input_bits=1`` the image itself is thresholded, which is input binarization, a defence of its own.
    :func:`nn.convert.convert` gives that layer ``input_bits=first_input_bits``; the weights keep their bits."""
    psum_ste_window: float = 0.0
    """Gradient of the chip forward in training (forward values never change). 0: straight through the whole
    readout, the digital layer's gradient. W > 0: a windowed straight-through estimator, the partial-sum analogue of
    a hard tanh: each row tile's digital dot product is weighted by the share of its readings whose partial sum lies
    within W of the ADC's threshold span (:func:`nn.engine.reading_share`); readings clipped to an end level pass
    none. Meant for coarse partial-sum quantization (a 1-bit reading is clipped everywhere but near 0)."""
    psum_ste_smooth: float = 0.0
    """The other gradient of the chip forward (forward values never change): T > 0 weights each row tile's
    digital dot product by the mean slope of a soft staircase (sigmoid steps of temperature T partial sums at the
    ADC's thresholds) over its readings (:func:`nn.engine.reading_share`): backward pass differentiable
    approximation (BPDA) with a smooth surrogate of the readout, for attacks and for training. Not with
    ``psum_ste_window``."""

    def __post_init__(self) -> None:
        _positive_int("weight_bits", self.weight_bits)
        if not (math.isfinite(self.psum_ste_window) and self.psum_ste_window >= 0):
            raise CIMConfigError(f"psum_ste_window={self.psum_ste_window!r} must be finite and >= 0")
        if not (math.isfinite(self.psum_ste_smooth) and self.psum_ste_smooth >= 0):
            raise CIMConfigError(f"psum_ste_smooth={self.psum_ste_smooth!r} must be finite and >= 0")
        if self.psum_ste_window > 0 and self.psum_ste_smooth > 0:
            raise CIMConfigError("psum_ste_window and psum_ste_smooth are two gradients of the readout: set one")
        _positive_int("input_bits", self.input_bits)
        if self.first_input_bits is not None:
            _positive_int("first_input_bits", self.first_input_bits)
        if self.input_mode not in ("bit_serial", "multilevel"):
            raise CIMConfigError(f"input_mode {self.input_mode!r}: choose 'bit_serial' or 'multilevel'")
        if self.input_signed and self.input_bits < 2:
            raise CIMConfigError("signed inputs need input_bits >= 2")
        if not math.isfinite(self.input_max) or self.input_max <= 0:
            raise CIMConfigError(f"input_max={self.input_max!r} must be finite and > 0")


@dataclass(frozen=True)
class RuntimeConfig:
    """Execution settings of the engine. Noise-free results are identical for every value (tested); seeded
    noise is drawn per chunk, so its draws depend on the chunk size (and the batch)."""

    chunk_elements: int = 2**22
    """Partial sums held at once: rows of the layer input are processed in chunks so that one chunk's
    partial-sum tensor [tiles, bit-planes x rows, columns] has at most about this many elements (at least
    one input row per chunk). Peak
    engine memory is then ~16 bytes x chunk_elements (partial sums, lookup index, readings) on top of
    the layer's own input and output, independent of batch size: 64 MiB at the default (which measured
    fastest on a 2-core CPU among 2^17..2^24; see benchmarks/RESULTS.md)."""

    fused: bool = True
    """CPU: run the fused bit-packed engine (:mod:`nn.fused`, numba): popcount partial sums read by the ADC in
    the same pass. False: the pure-torch reference path (chunked matmuls + readout), which CUDA always uses."""

    def __post_init__(self) -> None:
        _positive_int("chunk_elements", self.chunk_elements)


@dataclass(frozen=True)
class CIMConfig:
    """Everything a CIM layer needs besides torch's own constructor arguments."""

    adc: ADCConfig = field(default_factory=ADCConfig)
    """ADC model of every column."""
    array: ArrayConfig = field(default_factory=ArrayConfig)
    """Sub-array size, cell bits and the ADC mapping geometry."""
    quant: QuantConfig = field(default_factory=QuantConfig)
    """Weight and activation quantization."""
    runtime: RuntimeConfig = field(default_factory=RuntimeConfig)
    """How the engine runs (chunking): speed and memory; noise-free results never change."""

    def to_dict(self) -> dict[str, Any]:
        """Plain-JSON form (for checkpoint headers); :meth:`from_dict` inverts it."""
        return asdict(self)

    @staticmethod
    def from_dict(d: dict[str, Any]) -> CIMConfig:
        """Rebuild (and validate) a config from :meth:`to_dict` output; unknown keys are an error."""
        try:
            adc = dict(d["adc"])
            for key in ("thresholds", "levels"):
                if adc.get(key) is not None:
                    adc[key] = tuple(float(v) for v in adc[key])
            if adc.get("noise_table") is not None:
                adc["noise_table"] = tuple(tuple(float(p) for p in row) for row in adc["noise_table"])
            return CIMConfig(adc=ADCConfig(**adc), array=ArrayConfig(**d["array"]), quant=QuantConfig(**d["quant"]),
                             runtime=RuntimeConfig(**d.get("runtime", {})))
        except (KeyError, TypeError) as exc:
            raise CIMConfigError(f"not a CIM configuration: {exc}") from exc

    def __post_init__(self) -> None:
        q, a = self.quant, self.array
        if a.xnor and not (a.signed_psum and q.input_mode == "bit_serial"):
            raise CIMConfigError("array.xnor drives rows with +-1 input bits: it needs array.signed_psum=True and "
                                 "input_mode='bit_serial'")
        if q.input_mode == "multilevel" and q.input_signed and not a.signed_psum:
            raise CIMConfigError("signed multi-level inputs make negative column currents: set "
                                 "array.signed_psum=True or use input_mode='bit_serial'")
        if self.adc.noise_table is not None:
            lo, hi = self.psum_range
            if len(self.adc.noise_table) != hi - lo + 1:
                raise CIMConfigError(f"noise_table has {len(self.adc.noise_table)} rows; this array's partial "
                                     f"sums take {hi - lo + 1} values ({lo}..{hi})")

    @property
    def psum_range(self) -> tuple[int, int]:
        """(lowest, highest) integer partial sum one ADC can see: every row on at the largest cell value
        and input level; negative only with ``array.signed_psum``."""
        q, a = self.quant, self.array
        if q.input_mode == "bit_serial":
            in_max = 1
        else:
            in_max = 2 ** (q.input_bits - 1) if q.input_signed else 2**q.input_bits - 1
        hi = a.rows * (2**a.cell_bits - 1) * in_max
        return (-hi if a.signed_psum else 0), hi
