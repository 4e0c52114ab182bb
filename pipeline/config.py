"""Stage configurations: typed, frozen, validated on construction, hashed into every artifact."""

from __future__ import annotations

import hashlib
import json
import math
from dataclasses import asdict, dataclass, field
from typing import Any

from circuits.bench import SenseTiming
from circuits.bitline import BitlineConfig

ADC_KINDS: tuple[str, ...] = ("flash", "sar")


class ConfigError(ValueError):
    """A configuration value is invalid."""


class TrainingDiverged(RuntimeError):
    """The training loss stopped being a finite number (the train stage keeps the last finished epoch)."""


@dataclass(frozen=True)
class CharacterizeConfig:
    """Configuration of the SPICE characterization stage."""

    tech: str = "freepdk45"
    """Built-in technology name or path of a technology JSON file."""
    wl_ratios: tuple[float, ...] = (4.0, 10.0)
    """SA core W/L values to characterize (L = Lmin * l_factor)."""
    samples: int = 32
    """Monte Carlo samples per comparator reference (and SAR chips) per W/L."""
    adc: tuple[str, ...] = ADC_KINDS
    """Full-ADC Monte Carlo to run: any of 'flash', 'sar'. Flash chips reuse the comparator samples."""
    seed: int = 1
    """Root seed; every draw derives from it through numpy SeedSequence."""
    resolution_bits: int = 3
    """Trip-point resolution: the bitline input is bisected on a grid of 1/2**bits of a level."""
    validation_chips: int | None = None
    """Held-out full-ADC SPICE chips per ADC kind and W/L for the chips stage's validation (own random
    streams, never fitted); None: validate against the chips above (in-sample)."""
    chunk_size: int = 40
    """SA instances per ngspice deck (one task of the executor)."""
    mismatch: bool = True
    """Draw Pelgrom mismatch; False gives the nominal circuit (every decision must be ideal)."""
    l_factor: float = 1.0
    """Core channel length in units of Lmin."""
    precharge_wl_ratio: float = 8.0
    """W/L of the precharge PMOS."""
    bitline: BitlineConfig = field(default_factory=BitlineConfig)
    """Memory column parameters."""
    timing: SenseTiming = field(default_factory=SenseTiming)
    """SA phase timing and transient settings."""

    def __post_init__(self) -> None:
        if not self.wl_ratios:
            raise ConfigError("wl_ratios is empty; give at least one W/L, e.g. --wl 4 10")
        for wl in self.wl_ratios:
            if isinstance(wl, bool) or not isinstance(wl, int | float) or not math.isfinite(wl) or wl <= 0:
                raise ConfigError(f"invalid W/L {wl!r}: must be a finite number > 0")
        if len(set(self.wl_ratios)) != len(self.wl_ratios):
            raise ConfigError(f"duplicate W/L values in {self.wl_ratios}")
        if isinstance(self.samples, bool) or not isinstance(self.samples, int) or self.samples <= 0:
            raise ConfigError(f"samples={self.samples!r} must be a positive integer")
        unknown = set(self.adc) - set(ADC_KINDS)
        if unknown:
            raise ConfigError(f"unknown ADC kind(s) {sorted(unknown)}; choose from {list(ADC_KINDS)}")
        if not isinstance(self.seed, int) or self.seed < 0:
            raise ConfigError(f"seed={self.seed!r} must be a non-negative integer")
        if not isinstance(self.resolution_bits, int) or not 0 <= self.resolution_bits <= 8:
            raise ConfigError(f"resolution_bits={self.resolution_bits!r} must be an integer in 0..8")
        if self.validation_chips is not None and (
                isinstance(self.validation_chips, bool) or not isinstance(self.validation_chips, int)
                or self.validation_chips <= 0):
            raise ConfigError(f"validation_chips={self.validation_chips!r} must be a positive integer "
                              "(leave it out to validate in-sample)")
        if not isinstance(self.chunk_size, int) or self.chunk_size <= 0:
            raise ConfigError(f"chunk_size={self.chunk_size!r} must be a positive integer")
        if self.bitline.rows > 62:
            raise ConfigError(f"rows={self.bitline.rows} > 62 does not fit the per-level decision bitmask")
        for name in ("l_factor", "precharge_wl_ratio"):
            v = getattr(self, name)
            if not isinstance(v, int | float) or not math.isfinite(v) or v <= 0:
                raise ConfigError(f"{name}={v!r} must be a finite number > 0")

    def to_dict(self) -> dict[str, Any]:
        """Plain-JSON form."""
        return asdict(self)


def config_hash(payload: Any) -> str:
    """Stable short hash of a JSON-able payload (sorted keys)."""
    text = json.dumps(payload, sort_keys=True, default=str, separators=(",", ":"))
    return hashlib.sha256(text.encode()).hexdigest()[:16]
