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
import json
import pickle
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

import torch

from nn import CIMConfig, create_model
from pipeline.artifacts import ArtifactError, atomic_write, versions

FORMAT = "cimcosim-checkpoint"
FORMAT_VERSION = 1
ACTIVATIONS: dict[str, type[torch.nn.Module]] = {"relu": torch.nn.ReLU, "celu": torch.nn.CELU}


def _digest(h: Any, v: Any) -> None:
    if isinstance(v, torch.Tensor):
        t = v.detach().cpu().contiguous()
        h.update(f"T{t.dtype}{tuple(t.shape)}".encode())
        h.update(t.reshape(-1).view(torch.uint8).numpy().tobytes() if t.numel() else b"")
    elif isinstance(v, Mapping):
        for key in sorted(v, key=str):
            h.update(f"K{key!r}".encode())
            _digest(h, v[key])
    elif isinstance(v, list | tuple):
        h.update(f"L{len(v)}".encode())
        for item in v:
            _digest(h, item)
    else:
        h.update(f"V{v!r}".encode())


def state_digest(*parts: Any) -> str:
    """Hash of state dicts (nested dicts/lists of tensors and plain values: names, dtypes, shapes, bytes)."""
    h = hashlib.sha256()
    for part in parts:
        _digest(h, part)
    return h.hexdigest()


def save_checkpoint(path: Path, state: Mapping[str, Any], header: Mapping[str, Any],
                    extra: Mapping[str, Any] | None = None) -> None:
    """Write ``{"header", "state_dict"[, "extra"]}`` atomically; the header gets format, versions and the
    hash of the state (and of ``extra``, e.g. an optimizer's state for resuming)."""
    sd = {k: (v.detach().cpu().clone() if isinstance(v, torch.Tensor) else v) for k, v in state.items()}
    blob: dict[str, Any] = {"state_dict": sd}
    if extra is not None:
        blob["extra"] = dict(extra)
    head = {**header, "format": FORMAT, "format_version": FORMAT_VERSION, "versions": versions(),
            "torch": str(torch.__version__), "sha256": state_digest(sd, blob.get("extra"))}
    blob["header"] = json.loads(json.dumps(head, default=str))  # plain JSON types only (weights_only loads them)
    atomic_write(Path(path), lambda tmp: torch.save(blob, tmp))


def load_checkpoint(path: Path, *, fix: str, kind: str | None = None) -> tuple[dict[str, Any], dict[str, Any]]:
    """(header, state_dict) of a checkpoint, verified; ``fix`` is the hint given when it is unusable."""
    header, state, _ = load_checkpoint_extra(path, fix=fix, kind=kind)
    return header, state


def load_checkpoint_extra(path: Path, *, fix: str, kind: str | None = None
                          ) -> tuple[dict[str, Any], dict[str, Any], dict[str, Any] | None]:
    """(header, state_dict, extra or None) of a checkpoint, verified."""
    path = Path(path)
    if not path.is_file():
        raise ArtifactError(f"{path} is missing; {fix}")
    try:
        blob = torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as exc:
        raise ArtifactError(f"{path} is not a weights-only checkpoint (it holds pickled code or objects; "
                            f"refused to load it); delete it and {fix}") from exc
    except Exception as exc:  # noqa: BLE001 - zip/EOF/struct errors all mean a truncated or corrupt file
        raise ArtifactError(f"{path} is truncated or corrupt ({type(exc).__name__}); delete it and {fix}") from exc
    if not isinstance(blob, dict) or not isinstance(blob.get("header"), dict) \
            or not isinstance(blob.get("state_dict"), dict):
        raise ArtifactError(f"{path} is not a cimcosim checkpoint (no header/state_dict); {fix}")
    header, state = blob["header"], blob["state_dict"]
    if header.get("format") != FORMAT:
        raise ArtifactError(f"{path} is not a cimcosim checkpoint (format {header.get('format')!r}); {fix}")
    extra = blob.get("extra")
    if state_digest(state, extra) != header.get("sha256"):
        raise ArtifactError(f"{path} fails its content check (edited or corrupt); delete it and {fix}")
    if kind is not None and header.get("kind") != kind:
        raise ArtifactError(f"{path} holds a {header.get('kind')!r} checkpoint, expected {kind!r}; {fix}")
    return header, state, extra


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
               cim: CIMConfig | Callable[[dict[str, Any]], CIMConfig] | None = None
               ) -> tuple[torch.nn.Module, dict[str, Any]]:
    """Build the model of a checkpoint and load its weights (strict: a checkpoint of another model or other
    settings is refused with the mismatching names). ``cim`` replaces the stored CIM configuration, or maps
    the header to the one to use."""
    header, state = load_checkpoint(path, fix=fix, kind=kind)
    model = build_model(header, cim(header) if callable(cim) else cim)
    try:
        model.load_state_dict(state, strict=True)
    except RuntimeError as exc:
        first = str(exc).splitlines()
        detail = "; ".join(line.strip() for line in first[1:3]) or first[0]
        raise ArtifactError(f"{path} does not fit model {header.get('model')!r} with these settings "
                            f"({detail[:200]}); {fix}") from exc
    return model, header
