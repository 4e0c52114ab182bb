"""Checkpoints: a ``state_dict`` plus a JSON-able header, loadable with ``torch.load(..., weights_only=True)``.

File layout (``torch.save`` of a plain dict): ``{"header": {...}, "state_dict": {name: tensor}}``. The header
holds the format tag, what the file is (``kind``), the model name and constructor vocabulary, the full
CIM configuration, the data, seed and config hash of the stage that wrote it, software versions, and
``sha256``: a hash of every tensor's name, dtype, shape and bytes, checked on load, so a truncated or
edited file is reported instead of half-loaded. Writes are atomic. Loading never unpickles code: a pickle
with objects in it is refused with a one-line error.
"""

from __future__ import annotations

import hashlib
import pickle
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import torch

from nn import CIMConfig, create_model
from pipeline.artifacts import ArtifactError, atomic_write, versions

FORMAT = "cimcosim-checkpoint"
FORMAT_VERSION = 1
ACTIVATIONS: dict[str, type[torch.nn.Module]] = {"relu": torch.nn.ReLU, "celu": torch.nn.CELU}


def state_digest(state: Mapping[str, Any]) -> str:
    """Hash of a state dict's tensors (names, dtypes, shapes, bytes) and plain values, in key order."""
    h = hashlib.sha256()
    for key in sorted(state):
        v = state[key]
        h.update(key.encode())
        if isinstance(v, torch.Tensor):
            t = v.detach().cpu().contiguous()
            h.update(f"{t.dtype}{tuple(t.shape)}".encode())
            h.update(t.reshape(-1).view(torch.uint8).numpy().tobytes() if t.numel() else b"")
        else:
            h.update(repr(v).encode())
    return h.hexdigest()


def save_checkpoint(path: Path, state: Mapping[str, Any], header: Mapping[str, Any]) -> None:
    """Write ``{"header", "state_dict"}`` atomically; the header gets format, versions and the state hash."""
    sd = {k: (v.detach().cpu().clone() if isinstance(v, torch.Tensor) else v) for k, v in state.items()}
    head = {**header, "format": FORMAT, "format_version": FORMAT_VERSION, "versions": versions(),
            "torch": torch.__version__, "sha256": state_digest(sd)}
    atomic_write(Path(path), lambda tmp: torch.save({"header": head, "state_dict": sd}, tmp))


def load_checkpoint(path: Path, *, fix: str, kind: str | None = None) -> tuple[dict[str, Any], dict[str, Any]]:
    """(header, state_dict) of a checkpoint, verified; ``fix`` is the hint given when it is unusable."""
    path = Path(path)
    if not path.is_file():
        raise ArtifactError(f"{path} is missing; {fix}")
    try:
        blob = torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as exc:
        raise ArtifactError(f"{path} is not a weights-only checkpoint (it holds pickled code or objects, "
                            f"refused: {str(exc).splitlines()[0][:120]}); delete it and {fix}") from exc
    except Exception as exc:  # noqa: BLE001 - zip/EOF/struct errors all mean a truncated or corrupt file
        raise ArtifactError(f"{path} is truncated or corrupt ({type(exc).__name__}); delete it and {fix}") from exc
    if not isinstance(blob, dict) or not isinstance(blob.get("header"), dict) \
            or not isinstance(blob.get("state_dict"), dict):
        raise ArtifactError(f"{path} is not a cimcosim checkpoint (no header/state_dict); {fix}")
    header, state = blob["header"], blob["state_dict"]
    if header.get("format") != FORMAT:
        raise ArtifactError(f"{path} is not a cimcosim checkpoint (format {header.get('format')!r}); {fix}")
    if state_digest(state) != header.get("sha256"):
        raise ArtifactError(f"{path} fails its content check (edited or corrupt); delete it and {fix}")
    if kind is not None and header.get("kind") != kind:
        raise ArtifactError(f"{path} holds a {header.get('kind')!r} checkpoint, expected {kind!r}; {fix}")
    return header, state


def model_header(model_name: str, num_classes: int, in_chans: int, act: str, cim: CIMConfig) -> dict[str, Any]:
    """The constructor part of a header: everything :func:`build_model` needs."""
    if act not in ACTIVATIONS:
        raise ArtifactError(f"unknown activation {act!r}; choose from {sorted(ACTIVATIONS)}")
    return {"model": model_name, "num_classes": num_classes, "in_chans": in_chans, "act": act,
            "cim": cim.to_dict()}


def build_model(header: Mapping[str, Any], cim: CIMConfig | None = None) -> torch.nn.Module:
    """The CIM model a header describes (with ``cim`` replacing the stored configuration if given)."""
    try:
        cfg = cim or CIMConfig.from_dict(header["cim"])
        return create_model(header["model"], num_classes=int(header["num_classes"]),
                            in_chans=int(header["in_chans"]), act_layer=ACTIVATIONS[header["act"]], cim_config=cfg)
    except KeyError as exc:
        raise ArtifactError(f"checkpoint header lacks {exc}; it was not written by `cimcosim train`") from exc


def load_model(path: Path, *, fix: str, kind: str | None = None,
               cim: CIMConfig | None = None) -> tuple[torch.nn.Module, dict[str, Any]]:
    """Build the model of a checkpoint and load its weights (strict: a checkpoint of another model or other
    settings is refused with the mismatching names)."""
    header, state = load_checkpoint(path, fix=fix, kind=kind)
    model = build_model(header, cim)
    try:
        model.load_state_dict(state, strict=True)
    except RuntimeError as exc:
        first = str(exc).splitlines()
        detail = "; ".join(line.strip() for line in first[1:3]) or first[0]
        raise ArtifactError(f"{path} does not fit model {header.get('model')!r} with these settings "
                            f"({detail[:200]}); {fix}") from exc
    return model, header
