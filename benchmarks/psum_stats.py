"""Where a model's partial sums fall against its ADC's thresholds, layer by layer (a diagnostic, not a test).

Seed 000's Table I schemes were set for XNOR-SRAM columns, whose partial sums of +-1 products over 256 rows
spread over tens of units; bit-serial {0, 1} inputs on differential cells (``--psq-encoding unipolar``) give
partial sums packed near 0 (an all-zero input plane reads exactly 0); XNOR rows (``xnor``, the default with
``--psq``: a 0 bit drives -1) read the centred sums the scheme was set for. This prints, per CIM layer, the
share of partial sums that are exactly 0, their standard deviation, the share inside the scheme's zero band
(between the two thresholds around 0, all read as one code), and the codes used. Runs the pure-torch reference
path without its lookup tables and records every ``adc_read`` call.

    .venv/bin/python benchmarks/psum_stats.py --model0 runs/sn4f6/train/sn_b4_n0_none_std/model0.pt \\
        --psq 3.5bit --images 64
"""

from __future__ import annotations

import argparse
import logging
import sys
from dataclasses import replace
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import nn.engine as engine  # noqa: E402
from nn import ADCConfig, CIMConfig  # noqa: E402
from nn.config import RuntimeConfig  # noqa: E402
from nn.convert import cim_layers, set_digital  # noqa: E402
from pipeline.checkpoint import build_model, load_checkpoint  # noqa: E402
from pipeline.datasets import load_data  # noqa: E402
from pipeline.train import load_model0_weights  # noqa: E402


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model0", type=Path, required=True, help="a train stage's model0.pt")
    ap.add_argument("--psq", default=None, help="read through this Table I scheme (1bit | 2bit | 3.5bit) on 256-row "
                                                "signed columns instead of the model's own ADC")
    ap.add_argument("--psq-encoding", choices=["xnor", "unipolar"], default="xnor",
                    help="with --psq: a 0 input bit drives -1 (xnor) or leaves its row off (unipolar)")
    ap.add_argument("--images", type=int, default=64)
    ap.add_argument("--first-layer-digital", action="store_true", help="compute the image-reading layer exactly")
    args = ap.parse_args()
    logging.basicConfig(level=logging.WARNING)
    header, state = load_checkpoint(args.model0, fix="give a model0.pt of the train stage")
    cim = CIMConfig.from_dict(header["cim"])
    if args.psq:
        cim = replace(cim, adc=ADCConfig.scheme(args.psq), array=replace(
            cim.array, rows=256, signed_psum=True, xnor=args.psq_encoding == "xnor"))
    if args.first_layer_digital:
        cim = replace(cim, array=replace(cim.array, first_layer_digital=True))
    cim = replace(cim, runtime=RuntimeConfig(fused=False))
    model = build_model(header, cim)
    load_model0_weights(model, state, str(args.model0))  # every tensor but the chip offsets (another ADC here)
    set_digital(model, False)
    data = load_data(header["data"], None, args.images)
    seen: list[torch.Tensor] = []
    original = engine.adc_read

    def record(psum, adc, thr, lev, step, shift):
        seen.append(psum.detach().reshape(-1))
        return original(psum, adc, thr, lev, step, shift)

    engine.adc_read = record
    engine._LUT_MAX_ELEMENTS = 0  # read through adc_read, not the lookup tables (same codes, tested in the suite)
    names = {m: n for n, m in model.named_modules()}
    per_layer: dict[str, torch.Tensor] = {}
    hooks = []
    for layer in cim_layers(model):
        def done(m, _i, _o, name=names[layer]):
            per_layer[name] = torch.cat(seen) if seen else torch.empty(0)
            seen.clear()
        hooks.append(layer.register_forward_hook(done))
    with torch.no_grad():
        logits = model.eval()(data.x_test)
    acc = float((logits.argmax(1) == data.y_test).double().mean())
    print(f"accuracy of these weights read this way: {100 * acc:.1f} % on the first {len(data.y_test)} test images\n")
    thr = cim.adc.thresholds
    lo_band, hi_band = float("-inf"), float("inf")
    if thr is not None:
        lo_band = max((t for t in thr if t < 0), default=float("-inf"))
        hi_band = min((t for t in thr if t >= 0), default=float("inf"))
    print(f"| layer | partial sums | exactly 0 | std | in the zero band [{lo_band}, {hi_band}) | codes used |")
    print("|---|---|---|---|---|---|")
    for name, ps in per_layer.items():
        if not len(ps):
            continue
        band = float(((ps >= lo_band) & (ps < hi_band)).double().mean()) if thr is not None else float("nan")
        codes = len(set(torch.bucketize(ps, torch.tensor(thr, dtype=ps.dtype), right=True).tolist())) \
            if thr is not None else "-"
        print(f"| {name} | {len(ps):,} | {float((ps == 0).double().mean()):.3f} | {float(ps.double().std()):.2f} "
              f"| {band:.3f} | {codes} |")


if __name__ == "__main__":
    main()
