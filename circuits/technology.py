"""Technology description: model cards, device names, supply, minimum length and Pelgrom mismatch.

A technology is plain data. The built-in ones live as JSON in ``spice_models/``; a user with a foundry PDK
points ``--tech`` at a JSON file of the same shape (see ``spice_models/README.md``). Nothing read from the
file reaches a netlist unchecked: numbers are validated as finite and positive, device names as SPICE
identifiers, model files as existing paths.
"""

from __future__ import annotations

import importlib.util
import json
import math
import re
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from spice_models import TECHNOLOGY_DIR

_IDENT = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*$")


class TechnologyError(ValueError):
    """A technology description is unknown, malformed or points at missing files."""


@dataclass(frozen=True)
class Technology:
    """A MOSFET technology as the circuits need it."""

    name: str
    """Short name, recorded in every artifact."""
    model_files: tuple[str, ...]
    """Absolute paths of the SPICE model files to ``.include``."""
    nmos_model: str
    """Model name of the NMOS device used for every NMOS in the circuits."""
    pmos_model: str
    """Model name of the PMOS device."""
    vdd_v: float
    """Nominal supply voltage, volts."""
    lmin_m: float
    """Minimum drawn channel length, metres; circuits size W as ``wl_ratio * lmin_m``."""
    avt_nmos_v_m: float
    """Pelgrom threshold-mismatch coefficient of NMOS, V*m: sigma(dVth) = A_VT / sqrt(W*L)."""
    avt_pmos_v_m: float
    """Pelgrom threshold-mismatch coefficient of PMOS, V*m."""
    abeta_nmos_m: float = 0.0
    """Current-factor mismatch coefficient of NMOS, m (fraction*m): sigma(dbeta/beta) = A_beta/sqrt(W*L)."""
    abeta_pmos_m: float = 0.0
    """Current-factor mismatch coefficient of PMOS, m."""
    description: str = ""
    """Free text: where the cards come from and under which licence."""
    mismatch_source: str = ""
    """Free text: the literature source of the mismatch coefficients."""

    def __post_init__(self) -> None:
        for field in ("nmos_model", "pmos_model"):
            value = getattr(self, field)
            if not isinstance(value, str) or not _IDENT.match(value):
                raise TechnologyError(f"technology {self.name!r}: {field}={value!r} is not a SPICE model name")
        for field in ("vdd_v", "lmin_m", "avt_nmos_v_m", "avt_pmos_v_m", "abeta_nmos_m", "abeta_pmos_m"):
            value = getattr(self, field)
            positive = field in ("vdd_v", "lmin_m")
            if not isinstance(value, int | float) or not math.isfinite(value) or value < 0 or (
                positive and value == 0
            ):
                raise TechnologyError(
                    f"technology {self.name!r}: {field}={value!r} must be a finite "
                    f"{'positive' if positive else 'non-negative'} number"
                )
        if not self.model_files:
            raise TechnologyError(f"technology {self.name!r}: model_files is empty")
        for path in self.model_files:
            if not Path(path).is_file():
                raise TechnologyError(
                    f"technology {self.name!r}: model file {path} not found; run ./ngspice_setup.sh "
                    "(built-in cards) or fix the path in the technology file"
                )
            if any(c in path for c in "\n\r'\""):
                raise TechnologyError(f"technology {self.name!r}: model file path {path!r} has quotes/newlines")

    def to_dict(self) -> dict[str, Any]:
        """Plain-JSON form, recorded in artifacts."""
        return asdict(self)


def builtin_technologies() -> list[str]:
    """Names of the technologies shipped in ``spice_models/``."""
    return sorted(p.stem for p in TECHNOLOGY_DIR.glob("*.json"))


def _resolve_model_file(entry: str, base: Path) -> str:
    if entry.startswith("pkg:"):
        try:
            _, package, rel = entry.split(":", 2)
        except ValueError as exc:
            raise TechnologyError(f"model file entry {entry!r} must read pkg:PACKAGE:RELATIVE/PATH") from exc
        spec = importlib.util.find_spec(package)
        if spec is None or spec.origin is None:
            raise TechnologyError(
                f"model cards need the Python package {package!r}, which is not installed; run ./ngspice_setup.sh"
            )
        return str(Path(spec.origin).parent / rel)
    path = Path(entry).expanduser()
    return str(path if path.is_absolute() else (base / path).resolve())


def load_technology(name_or_file: str) -> Technology:
    """Load a built-in technology by name, or a technology JSON file by path."""
    candidate = Path(name_or_file).expanduser()
    if candidate.suffix == ".json" or candidate.is_file():
        path = candidate
    else:
        path = TECHNOLOGY_DIR / f"{name_or_file}.json"
        if not path.is_file():
            raise TechnologyError(
                f"unknown technology {name_or_file!r}; built-in: {', '.join(builtin_technologies())}, "
                "or pass the path of a technology JSON file"
            )
    if not path.is_file():
        raise TechnologyError(f"technology file {path} not found")
    try:
        raw = json.loads(path.read_text())
    except json.JSONDecodeError as exc:
        raise TechnologyError(f"technology file {path} is not valid JSON: {exc}") from exc
    if not isinstance(raw, dict):
        raise TechnologyError(f"technology file {path} must hold a JSON object")
    known = set(Technology.__dataclass_fields__)
    unknown = set(raw) - known
    if unknown:
        raise TechnologyError(f"technology file {path}: unknown keys {sorted(unknown)}; allowed: {sorted(known)}")
    files = raw.get("model_files")
    if not isinstance(files, list) or not all(isinstance(f, str) for f in files):
        raise TechnologyError(f"technology file {path}: model_files must be a list of paths")
    raw["model_files"] = tuple(_resolve_model_file(f, path.parent) for f in files)
    raw.setdefault("name", path.stem)
    try:
        return Technology(**raw)
    except TypeError as exc:
        raise TechnologyError(f"technology file {path}: {exc}") from exc
