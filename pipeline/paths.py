"""The one module that knows every path of a run folder."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path


@dataclass(frozen=True)
class RunPaths:
    """Paths of one run folder."""

    root: Path

    @property
    def characterize(self) -> Path:
        return self.root / "characterize"

    @property
    def characterize_chunks(self) -> Path:
        """Finished Monte Carlo chunks, one Parquet file each, keyed by the chunk's content hash."""
        return self.characterize / "chunks"

    @property
    def samples(self) -> Path:
        return self.characterize / "samples.parquet"

    @property
    def currents(self) -> Path:
        return self.characterize / "currents.parquet"

    @property
    def pass_rate(self) -> Path:
        return self.characterize / "pass_rate.parquet"

    @property
    def adc_codes(self) -> Path:
        return self.characterize / "adc_codes.parquet"

    @property
    def validation_codes(self) -> Path:
        """Full-ADC codes of the held-out validation chips (``--validation-chips``)."""
        return self.characterize / "validation_codes.parquet"

    @property
    def sar_offsets(self) -> Path:
        return self.characterize / "sar_offsets.parquet"

    @property
    def sar_offset_corr_png(self) -> Path:
        return self.characterize / "sar_offset_corr.png"

    @property
    def pass_rate_png(self) -> Path:
        return self.characterize / "pass_rate.png"

    @property
    def adc_codes_png(self) -> Path:
        return self.characterize / "adc_codes.png"

    @property
    def characterize_manifest(self) -> Path:
        return self.characterize / "manifest.json"

    @property
    def fit(self) -> Path:
        return self.root / "fit"

    @property
    def sigma_table(self) -> Path:
        return self.fit / "sigma.parquet"

    @property
    def offset_model(self) -> Path:
        return self.fit / "offset_model.json"

    @property
    def chips(self) -> Path:
        return self.root / "chips"

    @property
    def offsets(self) -> Path:
        return self.chips / "offsets.parquet"

    @property
    def validation(self) -> Path:
        return self.chips / "validation.json"

    @property
    def train(self) -> Path:
        return self.root / "train"

    def train_dir(self, tag: str) -> Path:
        """Outputs of ``cimcosim train --tag TAG``: model0.pt, history.parquet, metrics.json, curve.png."""
        return self.train / tag

    def model0(self, tag: str) -> Path:
        return self.train_dir(tag) / "model0.pt"

    @property
    def finetune(self) -> Path:
        return self.root / "finetune"

    def finetune_dir(self, tag: str, adc: str, wl_ratio: float) -> Path:
        """One design's finetune outputs: chip_<k>.pt, results.parquet, curves.parquet, plots."""
        return self.finetune / tag / f"{adc}_wl{wl_ratio:g}"

    def chip_checkpoint(self, tag: str, adc: str, wl_ratio: float, chip_id: int) -> Path:
        return self.finetune_dir(tag, adc, wl_ratio) / f"chip_{chip_id}.pt"
