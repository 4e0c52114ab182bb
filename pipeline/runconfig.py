"""The configuration of ``cimcosim run``: a preset TOML, a user's TOML over it, CLI flags over both.

One TOML section per stage; each key is a field of that stage's configuration dataclass, type-checked
against the field's annotation before the dataclass validates the value. A bad key or value fails with
one line naming the key and the file it came from. ``[run]`` holds what every stage shares: the root
seed (each stage derives its streams from it), workers, scheduler, device.
"""

from __future__ import annotations

import json
import tomllib
import types
import typing
from dataclasses import MISSING, dataclass, fields
from pathlib import Path
from typing import Any

from pipeline.config import ConfigError

PRESETS_DIR = Path(__file__).parent / "presets"
PRESETS = ("quick", "paper")


@dataclass(frozen=True)
class RunSettings:
    """``[run]``: what every stage shares."""

    seed: int = 1
    """Root seed of the whole run (every stage's streams derive from it through SeedSequence)."""
    workers: int = 2
    """Local worker processes (1: in-process)."""
    scheduler: str = ""
    """Dask scheduler address (tcp://host:port); empty: local processes."""
    device: str = "cpu"
    """Torch device of the network stages: cpu or cuda."""


@dataclass(frozen=True)
class TrainSection:
    """``[train]``: model0 of seed 001's studies (finetune and attack run on it)."""

    model: str = "vgg8_fmnist"
    tag: str = ""
    """Folder under train/ (empty: the model name)."""
    data: str = "fashion-mnist"
    subset: int | None = None
    test_subset: int | None = None
    epochs: int = 4
    batch: int = 128
    lr: float = 2e-3
    rows: int = 128
    """Rows per sub-array (the ADC reads one tile of this many rows)."""


@dataclass(frozen=True)
class FinetuneSection:
    """``[finetune]``: per-chip finetune of every design (ADC kind:W/L) listed."""

    designs: tuple[str, ...] = ("flash:10", "sar:10", "flash:4", "sar:4")
    chips: str = "0-19"
    iters: int | None = None
    batch: int = 200
    lr: float = 2e-4
    eval_every: int | None = None
    eval_images: int | None = 2000
    train_subset: int | None = None
    cross_chips: int = 3
    bn_batches: int = 10


@dataclass(frozen=True)
class AttackSection:
    """``[attack]``: seed 001's cases 1-3 on every finetuned design, for every attack listed."""

    attacks: tuple[str, ...] = ("cw-l2", "pgd")
    cases: tuple[int, ...] = (1, 2, 3)
    target_chip: int = 0
    source_chip: int = 1
    n_images: int = 100
    confidence: float = 0.0
    eps: float = 0.03
    max_iterations: int | None = None
    binary_search_steps: int = 9
    initial_const: float | None = None
    eot: int = 0


def _sections() -> dict[str, type]:
    from pipeline.chips import ChipsConfig
    from pipeline.config import CharacterizeConfig
    from pipeline.fit import FitConfig
    from pipeline.study_noise import StudyNoiseConfig

    return {"run": RunSettings, "characterize": CharacterizeConfig, "fit": FitConfig, "chips": ChipsConfig,
            "train": TrainSection, "finetune": FinetuneSection, "attack": AttackSection,
            "noise_study": StudyNoiseConfig}


#: Fields a run sets itself (the root seed), or nested settings a TOML does not reach.
_NOT_KEYS = {"seed", "bitline", "timing"}


def keys_of(section: str) -> dict[str, Any]:
    """{key: annotation} a section accepts."""
    cls = _sections()[section]
    hints = typing.get_type_hints(cls)
    skip = _NOT_KEYS - ({"seed"} if section == "run" else set())
    return {f.name: hints[f.name] for f in fields(cls) if f.name not in skip}


def defaults_of(section: str) -> dict[str, Any]:
    cls = _sections()[section]
    out = {}
    for f in fields(cls):
        if f.name in keys_of(section):
            out[f.name] = f.default if f.default is not MISSING else f.default_factory()  # type: ignore[operator]
    return out


def _type_ok(value: Any, ann: Any) -> bool:
    origin = typing.get_origin(ann)
    if origin in (typing.Union, types.UnionType):
        return any(_type_ok(value, a) for a in typing.get_args(ann))
    if ann is type(None):
        return value is None
    if origin is tuple:
        inner = typing.get_args(ann)[0]
        return isinstance(value, list | tuple) and all(_type_ok(v, inner) for v in value)
    if ann is bool:
        return isinstance(value, bool)
    if ann is int:
        return isinstance(value, int) and not isinstance(value, bool)
    if ann is float:
        return isinstance(value, int | float) and not isinstance(value, bool)
    return isinstance(value, ann)


def _type_name(ann: Any) -> str:
    return str(ann).replace("typing.", "").replace("<class '", "").replace("'>", "")


def load_toml(path: Path) -> dict[str, Any]:
    try:
        with open(path, "rb") as fh:
            return tomllib.load(fh)
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(f"{path}: malformed TOML ({exc}); fix the line it names") from exc
    except FileNotFoundError as exc:
        raise ConfigError(f"{path}: no such config file; copy one of {PRESETS_DIR}/*.toml") from exc


@dataclass
class RunConfig:
    """The merged configuration: ``values[section][key]`` and where each value came from."""

    values: dict[str, dict[str, Any]]
    origin: dict[tuple[str, str], str]

    def section(self, name: str) -> dict[str, Any]:
        return dict(self.values[name])

    @property
    def seed(self) -> int:
        return int(self.values["run"]["seed"])


def merge(layers: list[tuple[str, dict[str, Any]]]) -> RunConfig:
    """Merge ``(source name, {section: {key: value}})`` layers, later over earlier; check every key."""
    sections = _sections()
    values = {s: defaults_of(s) for s in sections}
    origin: dict[tuple[str, str], str] = {}
    for source, doc in layers:
        for section, body in doc.items():
            if section not in sections:
                raise ConfigError(f"{source}: unknown section [{section}]; known: {', '.join(sections)}")
            if not isinstance(body, dict):
                raise ConfigError(f"{source}: [{section}] must be a table of keys")
            known = keys_of(section)
            for key, value in body.items():
                if key not in known:
                    hint = " (the root seed is [run] seed)" if key == "seed" else ""
                    raise ConfigError(f"{source}: unknown key [{section}] {key}{hint}; known: {', '.join(known)}")
                if not _type_ok(value, known[key]):
                    raise ConfigError(f"{source}: [{section}] {key} = {value!r} must be {_type_name(known[key])}")
                values[section][key] = tuple(value) if isinstance(value, list) else value
                origin[(section, key)] = source
    cfg = RunConfig(values, origin)
    for section in sections:
        try:
            build(cfg, section)
        except (ConfigError, TypeError, ValueError) as exc:
            where = sorted({origin[(section, k)] for k in values[section] if (section, k) in origin}) or ["defaults"]
            raise ConfigError(f"{', '.join(where)}: [{section}]: {exc}") from exc
    return cfg


def build(cfg: RunConfig, section: str) -> Any:
    """The section as its stage's configuration object (the run's root seed filled in)."""
    cls = _sections()[section]
    kw = cfg.section(section)
    if section != "run" and "seed" in {f.name for f in fields(cls)}:
        kw["seed"] = cfg.seed
    return cls(**kw)


def preset_path(name: str) -> Path:
    if name not in PRESETS:
        raise ConfigError(f"unknown preset {name!r}; choose from {', '.join(PRESETS)} or pass --config FILE.toml")
    return PRESETS_DIR / f"{name}.toml"


def resolve(preset: str, config: Path | None, overrides: dict[str, dict[str, Any]]) -> RunConfig:
    """preset < --config file < CLI flags."""
    path = preset_path(preset)
    layers = [(str(path), load_toml(path))]
    if config is not None:
        layers.append((str(config), load_toml(config)))
    if overrides:
        layers.append(("command line", overrides))
    return merge(layers)


def _toml_value(v: Any) -> str:
    if isinstance(v, bool):
        return "true" if v else "false"
    if isinstance(v, list | tuple):
        return "[" + ", ".join(_toml_value(x) for x in v) + "]"
    if isinstance(v, float):
        return repr(v) if v == v and abs(v) != float("inf") else ("nan" if v != v else ("inf" if v > 0 else "-inf"))
    return json.dumps(v) if isinstance(v, str) else str(v)


def to_toml(cfg: RunConfig) -> str:
    """The merged configuration as TOML (None values, which TOML cannot hold, are left out: they mean default)."""
    lines = ["# The merged configuration of this run (preset < --config < flags); a valid --config file."]
    for section, body in cfg.values.items():
        lines.append(f"\n[{section}]")
        for key, value in body.items():
            if value is not None:
                lines.append(f"{key} = {_toml_value(value)}")
    return "\n".join(lines) + "\n"
