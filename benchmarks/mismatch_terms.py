"""Which mismatch term shapes sigma/Iref vs Iref (seed 001 Fig. 3b)? A small sweep, measured in one run.

The same standard-normal draws (common random numbers) are scaled by each setting's Pelgrom coefficients:
threshold-voltage mismatch only (A_beta = 0), current-factor mismatch only (A_VT = 0), both (the
technology's values), A_beta x 2, and A_VT / 4 with A_beta x 2 (the current-factor term dominating).
For each setting and reference, the SA samples are bisected for
their trip points (real ngspice), and the censored-normal fit of the input-referred offsets (the fit
stage's estimator: a trip point outside the input range is a bound, not a value) gives sigma(Iref);
a power law sigma/Iref = a * (Iref / 1 uA)^b is fitted across references.

First-order expectation: an offset from dVth scales with the input pair's gm (~ sqrt(I) in strong
inversion, ~ I in weak), so sigma/Iref falls or stays flat with Iref; an offset from dbeta scales with
the current itself, so sigma/Iref is flat. A rising curve (the seed's) needs a term that grows faster
than I. This script measures which it is for our circuit; it changes no default.

Run: .venv/bin/python benchmarks/mismatch_terms.py [--wl 4] [--samples 40] [--refs ...] [--settings NAME ...]
Prints ``RESULT sigma_over_iref_exponent_<setting>=<b>`` per setting.
"""

from __future__ import annotations

import argparse
import dataclasses
import logging
import time

import numpy as np

from circuits.ngspice import column_currents_a
from circuits.technology import load_technology
from pipeline.characterize import build_context
from pipeline.config import CharacterizeConfig
from pipeline.fit import censored_normal, power_law
from pipeline.montecarlo import trip_search
from pipeline.seeds import KIND_COMPARATOR, draw_mismatch


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--wl", type=float, default=4.0)
    ap.add_argument("--samples", type=int, default=40)
    ap.add_argument("--refs", type=int, nargs="+", default=[0, 3, 7, 11, 15, 19, 23, 27, 30])
    ap.add_argument("--settings", nargs="+", default=None, help="subset of the settings to run")
    args = ap.parse_args()
    logging.basicConfig(level=logging.WARNING)
    base = load_technology("freepdk45")
    settings = {
        "vt_only": dataclasses.replace(base, abeta_nmos_m=0.0, abeta_pmos_m=0.0),
        "beta_only": dataclasses.replace(base, avt_nmos_v_m=0.0, avt_pmos_v_m=0.0),
        "both": base,
        "beta_x2": dataclasses.replace(base, abeta_nmos_m=2 * base.abeta_nmos_m, abeta_pmos_m=2 * base.abeta_pmos_m),
        "vt_quarter_beta_x2": dataclasses.replace(
            base, avt_nmos_v_m=base.avt_nmos_v_m / 4, avt_pmos_v_m=base.avt_pmos_v_m / 4,
            abeta_nmos_m=2 * base.abeta_nmos_m, abeta_pmos_m=2 * base.abeta_pmos_m),
    }
    ctx = build_context(CharacterizeConfig(wl_ratios=(args.wl,)))
    sizing = ctx.sizing(args.wl)
    scale = 1 << ctx.resolution_bits
    xs = np.arange(ctx.bitline.rows * scale + 1) / scale
    cur = column_currents_a(base, sizing, ctx.bitline, list(xs))
    iref = np.interp(np.array(args.refs) + 0.5, xs, cur)
    print(f"W/L {args.wl:g}, {args.samples} samples per reference, references {args.refs}")
    print(f"A_VT nmos/pmos {base.avt_nmos_v_m * 1e9:.2f}/{base.avt_pmos_v_m * 1e9:.2f} mV*um, "
          f"A_beta nmos/pmos {base.abeta_nmos_m * 1e8:.2f}/{base.abeta_pmos_m * 1e8:.2f} %*um")
    for name, tech in settings.items():
        if args.settings and name not in args.settings:
            continue
        t0 = time.perf_counter()
        c = dataclasses.replace(ctx, tech=tech)
        sig = []
        for ref, i_ref in zip(args.refs, iref, strict=True):
            dvth, dbeta = draw_mismatch(tech, sizing, ctx.seed, KIND_COMPARATOR, ref, np.arange(args.samples))
            trip, status, _ = trip_search(c, sizing, ref, dvth, dbeta)
            top = ctx.bitline.rows * scale
            valid = status != "failed"
            ok = valid & (trip > 0) & (trip <= top)
            level = (trip[ok] - 0.5) / scale
            n_below, n_above = int((valid & (trip == 0)).sum()), int((valid & (trip > top)).sum())
            _, sigma = censored_normal(np.interp(level, xs, cur) - i_ref, np.full(n_below, cur[0] - i_ref),
                                       np.full(n_above, cur[-1] - i_ref))
            sig.append(sigma)
        ratio = np.array(sig) / iref
        law = power_law(iref, ratio)
        cells = " ".join(f"{r:.3f}" for r in ratio)
        print(f"{name:9s}: sigma/Iref per reference {cells}; fit a={law['a']:.3f} b={law['b']:+.2f} "
              f"R2={law['r2']:.2f} ({time.perf_counter() - t0:.0f} s)")
        print(f"RESULT sigma_over_iref_exponent_{name}={law['b']:.3f}")


if __name__ == "__main__":
    main()
