"""Named deployments of one design's models: what an attack is made on and what it is applied to.

=================  ========================================================================================
name               model
=================  ========================================================================================
``model0``         the software model (train stage), digital path
``nominal``        model0 on the design's ADC without offsets (partial-sum quantization only)
``raw_c<k>``       model0 on chip k's offsets, not finetuned (control: offsets alone)
``chip_c<k>``      chip k's finetuned weights on chip k (the seed's "chip k")
``model1_c<k>``    chip k's finetuned weights read out into the digital model (the seed's "model1")
``sw:<tag>``       another software model (e.g. model0 of another seed), digital path
=================  ========================================================================================
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from nn import load_chip
from nn.convert import set_digital
from pipeline.checkpoint import load_checkpoint, load_model
from pipeline.config import ConfigError
from pipeline.finetune import FIX_TRAIN, design_cim
from pipeline.offset_table import OffsetTable
from pipeline.paths import RunPaths

_NAME = re.compile(r"^(model0|nominal|(raw|chip|model1)_c(\d+)|sw:([A-Za-z0-9_.-]+))$")


@dataclass
class Design:
    """One design (ADC kind, W/L) of a run, for a train tag: builds the named deployments."""

    run_dir: Path
    tag: str
    adc: str
    wl_ratio: float
    device: str = "cpu"
    _table: OffsetTable | None = field(default=None, repr=False)

    @property
    def paths(self) -> RunPaths:
        return RunPaths(Path(self.run_dir))

    @property
    def table(self) -> OffsetTable:
        if self._table is None:
            self._table = OffsetTable(self.paths.offsets)
        return self._table

    def check(self, name: str) -> None:
        """Fail with one line if ``name`` is malformed or its model does not exist yet."""
        m = _NAME.match(name)
        if m is None:
            raise ConfigError(f"unknown deployment {name!r}: use model0, nominal, raw_c<k>, chip_c<k>, model1_c<k> "
                              "or sw:<tag>")
        if m.group(4):
            if not self.paths.model0(m.group(4)).is_file():
                raise ConfigError(f"software model {m.group(4)!r} not trained; run `cimcosim train --tag "
                                  f"{m.group(4)}` first")
            return
        if not self.paths.model0(self.tag).is_file():
            raise ConfigError(f"no model0 for tag {self.tag!r}; {FIX_TRAIN}")
        if m.group(2) in ("chip", "model1"):
            k = int(m.group(3))
            if not self.paths.chip_checkpoint(self.tag, self.adc, self.wl_ratio, k).is_file():
                raise ConfigError(f"chip {k} of {self.adc} W/L={self.wl_ratio:g} is not finetuned yet; run "
                                  f"`cimcosim finetune --tag {self.tag} --adc {self.adc} --wl {self.wl_ratio:g} "
                                  f"--chips {k}` first")
        if m.group(2) == "raw" and int(m.group(3)) >= self.table.n_chips(self.adc, self.wl_ratio):
            raise ConfigError(f"chip {m.group(3)} is not in the offsets table")

    def checkpoint(self, name: str) -> Path:
        """The checkpoint a deployment's weights come from."""
        m = _NAME.match(name)
        assert m is not None
        if m.group(4):
            return self.paths.model0(m.group(4))
        if m.group(2) in ("chip", "model1"):
            return self.paths.chip_checkpoint(self.tag, self.adc, self.wl_ratio, int(m.group(3)))
        return self.paths.model0(self.tag)

    def fingerprint(self, name: str) -> str:
        """What the deployment's behaviour depends on: its checkpoint's content hash (and chip id)."""
        header, _ = load_checkpoint(self.checkpoint(name), fix=FIX_TRAIN)
        table = "" if name.startswith(("sw:", "model")) else self.table.meta.get("config_hash", "")
        return f"{name}:{header['sha256']}:{table}"

    def model(self, name: str) -> torch.nn.Module:
        """Build the deployment (eval mode, on ``device``)."""
        self.check(name)
        m = _NAME.match(name)
        assert m is not None
        model: Any
        kind = "sw" if m.group(4) else (m.group(2) or m.group(1))
        model, _ = load_model(self.checkpoint(name), fix=FIX_TRAIN,
                              cim=None if kind == "sw" else (lambda h: design_cim(h, self.table, self.adc)))
        model.to(self.device).eval()
        set_digital(model, kind in ("model0", "model1", "sw"))
        if kind in ("raw", "chip"):
            load_chip(model, self.table, self.adc, self.wl_ratio, int(m.group(3)))
        return model
