"""What the cell-level benchmark scripts share: the flags that name a trained cell, and loading it on its own path
(as the noise study attacks it) with its first test images; a bad folder or tag exits 2 with one line."""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any

import torch

from nn.convert import cim_layers
from pipeline.artifacts import ArtifactError
from pipeline.bfa import model0_on_its_path
from pipeline.datasets import load_data


def cell_parser(doc: str) -> argparse.ArgumentParser:
    """A parser with --run-dir, --tag, --images and --threads (the script adds its own flags)."""
    ap = argparse.ArgumentParser(description=doc.splitlines()[0])
    ap.add_argument("--run-dir", type=Path, required=True)
    ap.add_argument("--tag", required=True, help="train tag: RUN/train/TAG/model0.pt")
    ap.add_argument("--images", type=int, default=200, help="the first N test images")
    ap.add_argument("--threads", type=int, default=1)
    return ap


def load_cell(ap: argparse.ArgumentParser, args: argparse.Namespace, noise_off: bool = False,
              need_noise: str = "") -> tuple[torch.nn.Module, dict[str, Any], Any]:
    """(model, header, data) for ``args.tag``, with ``args.threads`` torch threads; ``need_noise`` (a flag's name)
    exits 2 when the model reads no noise."""
    if args.images < 1 or args.threads < 1:
        ap.error("need --images >= 1 and --threads >= 1")
    torch.set_num_threads(args.threads)
    try:
        model, header, _ = model0_on_its_path(args.run_dir / "train" / args.tag / "model0.pt", noise_off=noise_off)
    except ArtifactError as exc:
        ap.exit(2, f"{ap.prog}: {exc}\n")
    if need_noise and not any(layer.cim_config.adc.reads_noise for layer in cim_layers(model)):
        ap.exit(2, f"{ap.prog}: {need_noise} needs a model with read noise; {args.tag} reads none\n")
    return model, header, load_data(header["data"], 2048, args.images)
