"""Which mismatch term shapes sigma/Iref vs Iref (seed 001 Fig. 3b)? A small sweep, measured in one run.

The same standard-normal draws (common random numbers) are scaled by each setting's Pelgrom coefficients:
threshold-voltage mismatch only (A_beta = 0), current-factor mismatch only (A_VT = 0), both (the
technology's values), and A_beta x 4. For each setting and reference, the SA samples are bisected for
their trip points (real ngspice), and the input-referred offset's standard deviation over samples gives
sigma(Iref); a power law sigma/Iref = a * (Iref / 1 uA)^b is fitted across references.

First-order expectation: an offset from dVth scales with the input pair's gm (~ sqrt(I) in strong
inversion, ~ I in weak), so sigma/Iref falls or stays flat with Iref; an offset from dbeta scales with
the current itself, so sigma/Iref is flat. A rising curve (the seed's) needs a term that grows faster
than I. This script measures which it is for our circuit; it changes no default.

Run: .venv/bin/python benchmarks/mismatch_terms.py [--wl 4] [--samples 40] [--refs 0 3 7 11 15 19 23 27 30]
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
from pipeline.fit import power_law
from pipeline.montecarlo import trip_search
from pipeline.seeds import KIND_COMPARATOR, draw_mismatch


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--wl", type=float, default=4.0)
    ap.add_argument("--samples", type=int, default=40)
    ap.add_argument("--refs", type=int, nargs="+", default=[0, 3, 7, 11, 15, 19, 23, 27, 30])
    args = ap.parse_args()
    logging.basicConfig(level=logging.WARNING)
    base = load_technology("freepdk45")
    settings = {
        "vt_only": dataclasses.replace(base, abeta_nmos_m=0.0, abeta_pmos_m=0.0),
        "beta_only": dataclasses.replace(base, avt_nmos_v_m=0.0, avt_pmos_v_m=0.0),
        "both": base,
        "beta_x4": dataclasses.replace(base, abeta_nmos_m=4 * base.abeta_nmos_m, abeta_pmos_m=4 * base.abeta_pmos_m),
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
        t0 = time.perf_counter()
        c = dataclasses.replace(ctx, tech=tech)
        sig = []
        for ref, i_ref in zip(args.refs, iref, strict=True):
            dvth, dbeta = draw_mismatch(tech, sizing, ctx.seed, KIND_COMPARATOR, ref, np.arange(args.samples))
            trip, status, _ = trip_search(c, sizing, ref, dvth, dbeta)
            top = ctx.bitline.rows * scale
            ok = (status != "failed") & (trip > 0) & (trip <= top)
            level = (trip[ok] - 0.5) / scale
            sig.append(float(np.std(np.interp(level, xs, cur) - i_ref, ddof=1)))
        ratio = np.array(sig) / iref
        law = power_law(iref, ratio)
        cells = " ".join(f"{r:.3f}" for r in ratio)
        print(f"{name:9s}: sigma/Iref per reference {cells}; fit a={law['a']:.3f} b={law['b']:+.2f} "
              f"R2={law['r2']:.2f} ({time.perf_counter() - t0:.0f} s)")
        print(f"RESULT sigma_over_iref_exponent_{name}={law['b']:.3f}")


if __name__ == "__main__":
    main()
