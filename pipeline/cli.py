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
from pipeline.config import ADC_KINDS, CharacterizeConfig, ConfigError

log = logging.getLogger("cimcosim")

_USER_ERRORS = (ConfigError, TechnologyError, NgspiceUnavailable, SimulationError, ArtifactError, ValueError)


def _add_exec_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--workers", type=int, default=os.cpu_count() or 1,
                   help="local worker processes (default: one per core; 1 runs in-process)")
    p.add_argument("--scheduler", default=None, help="Dask scheduler address (tcp://host:port) to run on a cluster")


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="cimcosim", description=__doc__)
    parser.add_argument("-v", "--verbose", action="store_true", help="debug logging")
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
    _add_exec_args(c)
    return parser


def _characterize(args: argparse.Namespace) -> None:
    from pipeline.characterize import characterize
    from pipeline.executor import make_executor

    if args.workers < 1:
        raise ConfigError(f"--workers {args.workers} must be >= 1")
    cfg = CharacterizeConfig(tech=args.tech, wl_ratios=tuple(args.wl), samples=args.samples, adc=tuple(args.adc),
                             seed=args.seed, resolution_bits=args.resolution_bits, mismatch=not args.no_mismatch)
    with make_executor(args.workers, args.scheduler) as ex, tqdm(desc="characterize", unit="chunk") as bar:
        def progress(done: int, total: int) -> None:
            bar.total = total
            bar.n = done
            bar.refresh()

        summary = characterize(cfg, args.run_dir, ex, progress)
    log.info("done in %.1f s: %d chunks (%d reused), %d instance-transients, %d failed, %d metastable -> %s",
             summary.seconds, summary.chunks_total, summary.chunks_reused, summary.transients, summary.n_failed,
             summary.n_metastable, args.run_dir / "characterize")


def main(argv: list[str] | None = None) -> int:
    """Entry point of the ``cimcosim`` console script."""
    args = _parser().parse_args(argv)
    logging.basicConfig(level=logging.DEBUG if args.verbose else logging.INFO,
                        format="%(levelname)s %(name)s: %(message)s")
    try:
        if args.command == "characterize":
            _characterize(args)
    except _USER_ERRORS as exc:
        print(f"cimcosim: error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("cimcosim: interrupted; finished chunks are kept, re-run the same command to resume", file=sys.stderr)
        return 130
    return 0


if __name__ == "__main__":
    sys.exit(main())
