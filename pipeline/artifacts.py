"""Atomic, schema-checked artifacts: Parquet tables with provenance metadata, and JSON documents.

Writes go to a temporary file in the same folder and are renamed into place, so an interrupt never
leaves a half-written artifact. Reads check the schema and the recorded row count and content hash,
so a corrupt or truncated file is reported, not half-read.
"""

from __future__ import annotations

import hashlib
import json
import os
import platform
import tempfile
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq

META_KEY = b"cimcosim"


class ArtifactError(RuntimeError):
    """An artifact is missing, corrupt, stale or does not match its schema."""


def versions() -> dict[str, str]:
    """Versions of the software that produced an artifact."""
    import numpy
    import PySpice

    out = {"python": platform.python_version(), "numpy": numpy.__version__, "pandas": pd.__version__,
           "pyarrow": pa.__version__, "PySpice": PySpice.__version__}
    try:
        from importlib.metadata import version

        out["cimcosim"] = version("cimcosim")
    except Exception:  # noqa: BLE001 - not installed as a distribution (e.g. running from a checkout)
        out["cimcosim"] = "unknown"
    return out


def atomic_write(path: Path, writer: Any) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    os.close(fd)
    try:
        writer(tmp)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def _table_digest(table: pa.Table) -> str:
    """Content hash of the values (and column names/types); independent of Arrow buffer layout."""
    h = hashlib.sha256(str(table.schema).encode())
    h.update(pd.util.hash_pandas_object(table.to_pandas(), index=False).to_numpy().tobytes())
    return h.hexdigest()


def write_table(df: pd.DataFrame, path: Path, schema: pa.Schema, meta: Mapping[str, Any]) -> None:
    """Write ``df`` as Parquet with exactly ``schema`` (columns and types checked) and metadata ``meta``."""
    missing = [n for n in schema.names if n not in df.columns]
    extra = [c for c in df.columns if c not in schema.names]
    if missing or extra:
        raise ArtifactError(f"{path.name}: columns do not match schema (missing {missing}, extra {extra})")
    try:
        table = pa.Table.from_pandas(df[schema.names], schema=schema, preserve_index=False)
        table = table.replace_schema_metadata(None)  # the digest covers data and schema, not pandas' notes
    except (pa.ArrowInvalid, pa.ArrowTypeError) as exc:
        raise ArtifactError(f"{path.name}: data does not fit schema: {exc}") from exc
    record = dict(meta)
    record.update({"rows": table.num_rows, "sha256": _table_digest(table)})
    table = table.replace_schema_metadata({META_KEY: json.dumps(record, default=str).encode()})
    atomic_write(path, lambda tmp: pq.write_table(table, tmp))


def read_table(path: Path, schema: pa.Schema, *, fix: str) -> tuple[pd.DataFrame, dict[str, Any]]:
    """Read a table written by :func:`write_table`; ``fix`` is the hint given if it is missing or corrupt."""
    if not path.is_file():
        raise ArtifactError(f"{path} is missing; {fix}")
    try:
        table = pq.read_table(path)
        raw = (table.schema.metadata or {}).get(META_KEY)
        meta = json.loads(raw) if raw else None
    except Exception as exc:  # noqa: BLE001 - any parse failure means a corrupt file
        raise ArtifactError(f"{path} is corrupt ({type(exc).__name__}: {exc}); delete it and {fix}") from exc
    if meta is None:
        raise ArtifactError(f"{path} has no cimcosim metadata; delete it and {fix}")
    table = table.replace_schema_metadata(None)
    if table.schema != schema:
        raise ArtifactError(f"{path} does not match the expected schema (written by another version?); {fix}")
    if table.num_rows != meta.get("rows") or _table_digest(table) != meta.get("sha256"):
        raise ArtifactError(f"{path} fails its row-count/content check (truncated or edited); delete it and {fix}")
    return table.to_pandas(), meta


def write_json(path: Path, payload: Mapping[str, Any]) -> None:
    """Write a JSON document atomically."""
    text = json.dumps(payload, indent=2, sort_keys=True, default=str)
    atomic_write(path, lambda tmp: Path(tmp).write_text(text + "\n"))


def read_json(path: Path, *, fix: str) -> dict[str, Any]:
    """Read a JSON document, with a one-line error naming the fix."""
    if not path.is_file():
        raise ArtifactError(f"{path} is missing; {fix}")
    try:
        data = json.loads(path.read_text())
    except (OSError, json.JSONDecodeError) as exc:
        raise ArtifactError(f"{path} is corrupt ({exc}); delete it and {fix}") from exc
    if not isinstance(data, dict):
        raise ArtifactError(f"{path} is not a JSON object; delete it and {fix}")
    return data
