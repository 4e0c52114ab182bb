"""The per-chip ADC offset table: the one artifact that crosses from the circuit side to the network side.

Schema (``chips/offsets.parquet``, one row per comparator threshold of every physical ADC):

=================  =======  ==================================================================
column             type     meaning
=================  =======  ==================================================================
adc                string   ADC kind of the design: 'flash' | 'sar'
wl_ratio           float64  SA W/L of the design
chip_id            int64    chip (one draw of every ADC on the die)
macro_id           int32    sub-array / macro on the die
adc_id             int32    physical ADC within the macro (columns_per_adc columns share it)
comparator_id      int32    threshold j, between partial sums j and j+1 (0 .. 2**bits - 2)
bits               int32    ADC resolution
offset_a           float64  shift of the reference current of threshold j, amperes
offset_lsb         float64  the same shift in partial-sum units (ideal threshold j + 0.5 moves to
                            j + 0.5 + offset_lsb), converted through the measured current curve
seed               int64    root seed of the chips stage
=================  =======  ==================================================================

Rows are sorted by (adc, wl_ratio, chip_id, macro_id, adc_id, comparator_id) and every (design, chip)
is its own Parquet row group, so one chip is read without loading the others. File metadata
(``cimcosim`` key) holds the schema version, geometry, seed, the chip model that drew the table,
provenance and config hashes, and ``row_groups``: per chip [adc, wl_ratio, chip_id, row group, SHA-256 of
the chip's values] -- the hash is checked every time that chip is read, so a changed value (a flipped bit)
is reported with the chip id, and reading one chip stays one row group's work.
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq

from pipeline.artifacts import META_KEY, ArtifactError

OFFSETS_SCHEMA_VERSION = 1
OFFSETS = pa.schema([
    pa.field("adc", pa.string()),
    pa.field("wl_ratio", pa.float64()),
    pa.field("chip_id", pa.int64()),
    pa.field("macro_id", pa.int32()),
    pa.field("adc_id", pa.int32()),
    pa.field("comparator_id", pa.int32()),
    pa.field("bits", pa.int32()),
    pa.field("offset_a", pa.float64()),
    pa.field("offset_lsb", pa.float64()),
    pa.field("seed", pa.int64()),
])

FIX = "run `cimcosim chips --run-dir RUN --n-chips N` again"


def chip_digest(df: pd.DataFrame) -> str:
    """SHA-256 of one chip's rows (every column, in schema order and dtype): the same before writing and
    after reading back."""
    h = hashlib.sha256()
    for field in OFFSETS:
        col = df[field.name]
        if pa.types.is_string(field.type):
            h.update("\x1f".join(map(str, col)).encode())
        else:
            h.update(np.ascontiguousarray(col.to_numpy(field.type.to_pandas_dtype())).tobytes())
    return h.hexdigest()


class OffsetTable:
    """Read access to an offsets file; chips are loaded one row group at a time."""

    def __init__(self, path: str | Path) -> None:
        self.path = Path(path)
        if not self.path.is_file():
            raise ArtifactError(f"{self.path} is missing; {FIX}")
        try:
            self._file = pq.ParquetFile(self.path)
            raw = (self._file.schema_arrow.metadata or {}).get(META_KEY)
            self.meta: dict[str, Any] = json.loads(raw) if raw else {}
        except Exception as exc:  # noqa: BLE001 - any parse failure means corrupt
            raise ArtifactError(f"{self.path} is corrupt ({exc}); {FIX}") from exc
        if self._file.schema_arrow.remove_metadata() != OFFSETS or not self.meta:
            raise ArtifactError(f"{self.path} is not a cimcosim offsets table (schema mismatch); {FIX}")
        self.geometry: dict[str, int] = self.meta["geometry"]
        self._groups: dict[tuple[str, float, int], int] = {}
        self._digests: dict[tuple[str, float, int], str] = {}
        for d, w, c, g, *digest in self.meta["row_groups"]:
            self._groups[(d, float(w), int(c))] = int(g)
            if digest:
                self._digests[(d, float(w), int(c))] = digest[0]

    @property
    def designs(self) -> list[tuple[str, float]]:
        """(adc kind, W/L) pairs in the table."""
        return sorted({(d, w) for d, w, _ in self._groups})

    def n_chips(self, adc: str, wl_ratio: float) -> int:
        return sum(1 for d, w, _ in self._groups if d == adc and w == float(wl_ratio))

    def chip(self, adc: str, wl_ratio: float, chip_id: int) -> pd.DataFrame:
        """All rows of one chip of one design (reads only that chip's row group)."""
        key = (adc, float(wl_ratio), int(chip_id))
        if key not in self._groups:
            raise KeyError(f"no chip {chip_id} for design {adc} W/L={wl_ratio:g} in {self.path}; "
                           f"designs: {self.designs}, chips per design: {self.n_chips(adc, wl_ratio)}")
        name = f"chip {chip_id} of {adc} W/L={wl_ratio:g}"
        try:
            df = self._file.read_row_group(self._groups[key]).to_pandas()
        except Exception as exc:  # noqa: BLE001 - a damaged page fails to decode in many ways
            raise ArtifactError(f"{self.path}: {name} is corrupt ({type(exc).__name__}: {exc}); {FIX}") from exc
        g = self.geometry
        expected = g["n_macros"] * g["adcs_per_macro"] * g["n_thresholds"]
        if len(df) != expected or (df.chip_id != chip_id).any():
            raise ArtifactError(f"{self.path}: {name} has {len(df)} rows, expected {expected}; {FIX}")
        digest = self._digests.get(key)
        if digest is not None and chip_digest(df) != digest:
            raise ArtifactError(f"{self.path}: {name} fails its content hash (its values changed after "
                                f"`cimcosim chips` wrote them); {FIX}")
        return df

    def threshold_shifts_lsb(self, adc: str, wl_ratio: float, chip_id: int) -> np.ndarray:
        """float32 array [n_macros, adcs_per_macro, n_thresholds] of threshold shifts in partial-sum units."""
        g = self.geometry
        df = self.chip(adc, wl_ratio, chip_id)
        return df.offset_lsb.to_numpy(np.float32).reshape(g["n_macros"], g["adcs_per_macro"], g["n_thresholds"])
