"""The ``cimcosim`` command line: thin wrappers around the stage functions."""

from __future__ import annotations

import argparse
import logging
import os
import sys
from pathlib import Path

from tqdm import tqdm

from circuits.ngspice import NgspiceUnavailable, SimulationError
from circuits.technology import TechnologyError
from pipeline.artifacts import ArtifactError
from pipeline.chip_models import CHIP_MODELS
from pipeline.chips import ChipsConfig
from pipeline.cli_nn import bars_off
from pipeline.config import ADC_KINDS, CharacterizeConfig, ConfigError, TrainingDiverged
from pipeline.executor import usable_cpus

log = logging.getLogger("cimcosim")

_USER_ERRORS = (ConfigError, TechnologyError, NgspiceUnavailable, SimulationError, ArtifactError, ValueError,
                TrainingDiverged)


def _add_exec_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--workers", type=int, default=usable_cpus(),
                   help="local worker processes (default: one per core; 1 runs in-process)")
    p.add_argument("--scheduler", default=None, help="Dask scheduler address (tcp://host:port) to run on a cluster")


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="cimcosim", description=__doc__)
    parser.add_argument("-v", "--verbose", action="store_true", help="debug logging")
    parser.add_argument("-q", "--quiet", action="store_true", help="warnings only, no progress bars")
    sub = parser.add_subparsers(dest="command", required=True)
    c = sub.add_parser("characterize", help="ngspice Monte Carlo of the SA and 5-bit Flash/SAR ADCs")
    d = CharacterizeConfig()
    c.add_argument("--run-dir", type=Path, required=True, help="run folder (created; re-running resumes)")
    c.add_argument("--samples", type=int, default=d.samples, help=f"MC samples per reference and W/L ({d.samples})")
    c.add_argument("--wl", type=float, nargs="+", default=list(d.wl_ratios), help="SA W/L ratios (L = Lmin)")
    c.add_argument("--adc", nargs="+", default=list(d.adc), choices=ADC_KINDS, help="full-ADC Monte Carlo to run")
    c.add_argument("--tech", default=d.tech, help="built-in technology name or technology JSON file")
    c.add_argument("--seed", type=int, default=d.seed, help="root seed")
    c.add_argument("--resolution-bits", type=int, default=d.resolution_bits, help="trip-point grid: 1/2**bits level")
    c.add_argument("--no-mismatch", action="store_true", help="nominal devices (every decision must be ideal)")
    c.add_argument("--validation-chips", type=int, default=None,
                   help="held-out full-ADC SPICE chips per ADC kind and W/L for the chips stage's validation")
    _add_exec_args(c)

    f = sub.add_parser("fit", help="Gaussian Iref-offset model from the characterization (probit and direct)")
    f.add_argument("--run-dir", type=Path, required=True)

    ch = sub.add_parser("chips", help="per-chip ADC offset tables, validated against full-ADC SPICE")
    _add_chips_args(ch)

    from pipeline.cli_nn import (
        add_attack_parser,
        add_bfa_parser,
        add_finetune_parser,
        add_study_noise_parser,
        add_train_parser,
    )
    from pipeline.graph import STAGE_NAMES

    add_train_parser(sub)
    add_finetune_parser(sub, _add_exec_args)
    add_attack_parser(sub, _add_exec_args)
    add_bfa_parser(sub, _add_exec_args)
    add_study_noise_parser(sub, _add_exec_args)

    r = sub.add_parser("run", help="the whole graph: characterize -> fit -> chips, train -> finetune -> attack, "
                                   "noise study -> report (resumable; unchanged stages are skipped)")
    r.add_argument("--run-dir", type=Path, required=True)
    r.add_argument("--preset", default="quick", help="quick (the default, minutes) | paper (the seeds' scale)")
    r.add_argument("--config", type=Path, default=None, help="a TOML file over the preset (copy a preset to start)")
    r.add_argument("--until", default=None, help="stop after this stage: " + " | ".join(STAGE_NAMES))
    r.add_argument("--workers", type=int, default=None, help="local worker processes ([run] workers)")
    r.add_argument("--scheduler", default=None, help="Dask scheduler address (tcp://host:port)")
    r.add_argument("--device", default=None, help="cpu | cuda (network stages)")
    r.add_argument("--seed", type=int, default=None, help="root seed ([run] seed)")
    r.add_argument("--samples", type=int, default=None, help="MC samples per reference and W/L")
    r.add_argument("--n-chips", type=int, default=None, help="chips per design")
    r.add_argument("-q", "--quiet", action="store_true", default=argparse.SUPPRESS, help="warnings only, no bars")

    rep = sub.add_parser("report", help="DIR/report/: index.html, report.md, summary.json from what the run holds")
    rep.add_argument("--run-dir", type=Path, required=True)
    return parser


def _add_chips_args(p: argparse.ArgumentParser) -> None:
    d = ChipsConfig()
    p.add_argument("--run-dir", type=Path, required=True)
    p.add_argument("--n-chips", type=int, default=d.n_chips, help=f"chips per design ({d.n_chips})")
    p.add_argument("--adc", nargs="+", default=list(d.adc), help="ADC kinds: flash sar")
    p.add_argument("--wl", type=float, nargs="+", default=None, help="W/L values (default: all characterized)")
    p.add_argument("--n-macros", type=int, default=d.n_macros)
    p.add_argument("--columns-per-macro", type=int, default=d.columns_per_macro)
    p.add_argument("--columns-per-adc", type=int, default=d.columns_per_adc)
    p.add_argument("--sigma-source", default=d.sigma_source, help="direct | probit (the paper model's sigma)")
    p.add_argument("--model", default=d.model, help=f"chip model: {' | '.join(CHIP_MODELS)} ({d.model})")
    p.add_argument("--seed", type=int, default=d.seed)


def _chips_config(args: argparse.Namespace) -> ChipsConfig:
    return ChipsConfig(n_chips=args.n_chips, adc=tuple(args.adc), wl_ratios=tuple(args.wl) if args.wl else None,
                       n_macros=args.n_macros, columns_per_macro=args.columns_per_macro,
                       columns_per_adc=args.columns_per_adc, sigma_source=args.sigma_source, model=args.model,
                       seed=args.seed)


def _chips(run_dir: Path, cfg: ChipsConfig) -> None:
    from pipeline.chips import chips

    out = chips(run_dir, cfg)
    for key, models in out["models"].items():
        for model, v in models.items():
            if "mean_tv" not in v:
                continue
            mark = "<- table" if model == cfg.model else ""
            log.info("%s %-9s: mean TV %.3f (max %.3f at level %d); an exact table would show %.3f (95%% up to "
                     "%.3f) with %d %s SPICE chips %s", key, model, v["mean_tv"], v["max_tv"], v["worst_level"],
                     v["tv_noise_floor"], v["tv_noise_p95"], v["n_spice_chips"], v["spice_set"], mark)


def _characterize_config(args: argparse.Namespace) -> CharacterizeConfig:
    return CharacterizeConfig(tech=args.tech, wl_ratios=tuple(args.wl), samples=args.samples, adc=tuple(args.adc),
                              seed=args.seed, resolution_bits=args.resolution_bits, mismatch=not args.no_mismatch,
                              validation_chips=args.validation_chips)


def _characterize(cfg: CharacterizeConfig, args: argparse.Namespace) -> None:
    from pipeline.characterize import characterize
    from pipeline.executor import make_executor

    if args.workers < 1:
        raise ConfigError(f"--workers {args.workers} must be >= 1")
    with make_executor(args.workers, args.scheduler) as ex, \
            tqdm(desc="characterize", unit="chunk", disable=bars_off()) as bar:
        def progress(done: int, total: int) -> None:
            bar.total = total
            bar.n = done
            bar.refresh()

        summary = characterize(cfg, args.run_dir, ex, progress)
    log.info("done in %.1f s: %d chunks (%d reused), %d instance-transients, %d failed, %d metastable -> %s",
             summary.seconds, summary.chunks_total, summary.chunks_reused, summary.transients, summary.n_failed,
             summary.n_metastable, args.run_dir / "characterize")


def _fit(args: argparse.Namespace) -> None:
    from pipeline.fit import fit

    doc = fit(args.run_dir)
    for m in doc["models"]:
        law = m["power_law_sigma_over_iref"]
        log.info("fit W/L=%g: sigma/Iref = %.3g * (Iref/uA)^%.2f (R2 %.2f)", m["wl_ratio"], law["a"], law["b"],
                 law["r2"])


def _run(args: argparse.Namespace) -> None:
    from pipeline.artifacts import atomic_write
    from pipeline.graph import last_stage, run_graph
    from pipeline.runconfig import resolve, to_toml

    flags = {"run": {"seed": args.seed, "workers": args.workers, "scheduler": args.scheduler, "device": args.device},
             "characterize": {"samples": args.samples}, "chips": {"n_chips": args.n_chips}}
    overrides = {s: {k: v for k, v in body.items() if v is not None} for s, body in flags.items()}
    cfg = resolve(args.preset, args.config, {s: b for s, b in overrides.items() if b})
    if cfg.values["run"]["workers"] < 1:
        raise ConfigError(f"workers={cfg.values['run']['workers']} must be >= 1")
    from pipeline.cli_nn import _check_device

    _check_device(cfg.values["run"]["device"])
    last_stage(args.until)  # a bad --until fails before config.toml is written
    args.run_dir.mkdir(parents=True, exist_ok=True)
    text = to_toml(cfg)
    atomic_write(args.run_dir / "config.toml", lambda tmp: Path(tmp).write_text(text))
    manifest = run_graph(args.run_dir, cfg, until=args.until, quiet=args.quiet)
    total = sum(v.get("seconds", 0) or 0 for v in manifest["stages"].values())
    log.warning("run: %d stages in %s (%.0f s of stage time) -> %s", len(manifest["stages"]), args.run_dir, total,
                args.run_dir / "report" / "index.html")


def _writable(run_dir: Path) -> None:
    """Fail before any long work when the run folder cannot be created or written (an OSError, reported as one
    line by ``main``): a bad --run-dir must not cost an epoch of training first."""
    run_dir.mkdir(parents=True, exist_ok=True)
    probe = run_dir / f".write_probe_{os.getpid()}"
    probe.write_bytes(b"")
    probe.unlink()


def main(argv: list[str] | None = None) -> int:
    """Entry point of the ``cimcosim`` console script."""
    args = _parser().parse_args(argv)
    logging.basicConfig(level=logging.DEBUG if args.verbose else logging.WARNING if args.quiet else logging.INFO,
                        format="%(levelname)s %(name)s: %(message)s")
    if args.quiet:
        import pipeline.cli_nn

        pipeline.cli_nn.QUIET = True
    try:
        _writable(args.run_dir)
        if args.command == "characterize":
            _characterize(_characterize_config(args), args)
        elif args.command == "fit":
            _fit(args)
        elif args.command == "chips":
            _chips(args.run_dir, _chips_config(args))
        elif args.command == "run":
            _run(args)
        elif args.command == "train":
            from pipeline.cli_nn import run_train

            run_train(args)
        elif args.command == "finetune":
            from pipeline.cli_nn import run_finetune

            run_finetune(args)
        elif args.command == "attack":
            from pipeline.cli_nn import run_attack

            run_attack(args)
        elif args.command == "bfa":
            from pipeline.cli_nn import run_bfa

            run_bfa(args)
        elif args.command == "study-noise":
            from pipeline.cli_nn import run_study_noise

            run_study_noise(args)
        elif args.command == "report":
            from pipeline.report import report

            log.info("report: %(sections)d sections -> %(path)s", report(args.run_dir))
    except _USER_ERRORS as exc:
        print(f"cimcosim: error: {exc}", file=sys.stderr)
        return 2
    except OSError as exc:  # an unwritable or invalid --run-dir, a full disk, a vanished file
        where = f" {exc.filename}" if exc.filename else ""
        print(f"cimcosim: error: cannot access{where}: {exc.strerror or exc}; check that --run-dir is a writable "
              "directory with free space", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("cimcosim: interrupted; finished chunks are kept, re-run the same command to resume", file=sys.stderr)
        return 130
    return 0


if __name__ == "__main__":
    sys.exit(main())
