"""Is a trained model's adversarial accuracy robustness, label leaking or a BatchNorm-statistics artefact?

Run: .venv/bin/python benchmarks/adv_diagnostics.py --run-dir runs/sn4_e10 --tag sn_b4_n0_none_adv --eps 0.1
     [--images 200] [--threads 1]
Loads the tag's model0 on its own path (as the noise study attacks it) and prints the accuracy on the first
N test images: clean; with label-free perturbations of the same budget (uniform, random signs); under PGD
computed for the true label (10 steps, and 50 smaller ones), for the model's own prediction, and for a wrong
label (y + 1), with how often the model then predicts that wrong label; and the clean accuracy after
re-estimating BatchNorm's running statistics on clean training images. Label leaking shows as PGD with the
true label scoring far above clean and label-free noise; corrupted running statistics as a clean accuracy
that recalibration restores.
"""

from __future__ import annotations

import argparse
from pathlib import Path

import torch

from nn.attacks import PGD
from nn.training import accuracy, recalibrate_batchnorm
from pipeline.bfa import model0_on_its_path
from pipeline.datasets import load_data


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--run-dir", type=Path, required=True)
    ap.add_argument("--tag", required=True)
    ap.add_argument("--eps", type=float, default=0.1)
    ap.add_argument("--images", type=int, default=200)
    ap.add_argument("--threads", type=int, default=1)
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    model, header, _ = model0_on_its_path(args.run_dir / "train" / args.tag / "model0.pt")
    data = load_data(header["data"], 2048, args.images)
    x, y = data.x_test, data.y_test
    gen = torch.Generator().manual_seed(0)
    eps, alpha = args.eps, 2 / 255 * args.eps / 0.03

    def acc(z: torch.Tensor, labels: torch.Tensor = y) -> float:
        return 100 * accuracy(model, z, labels, batch=args.images)

    with torch.no_grad():
        pred = model(x).argmax(1)
    wrong = (y + 1) % 10
    rows = [("clean", acc(x)),
            ("uniform noise +-eps", acc((x + (2 * torch.rand(x.shape, generator=gen) - 1) * eps).clamp(0, 1))),
            ("random signs x eps", acc((x + torch.sign(torch.rand(x.shape, generator=gen) - 0.5) * eps).clamp(0, 1))),
            ("PGD, true label, 10 steps", acc(PGD(eps, alpha, 10, seed=1)(model, x, y))),
            ("PGD, true label, 50 steps of alpha/4", acc(PGD(eps, alpha / 4, 50, seed=1)(model, x, y))),
            ("PGD, the model's own prediction", acc(PGD(eps, alpha, 10, seed=1)(model, x, pred)))]
    adv = PGD(eps, alpha, 10, seed=1)(model, x, wrong)
    rows += [("PGD for a wrong label (y+1): accuracy", acc(adv)),
             ("PGD for a wrong label (y+1): predicts that label", acc(adv, wrong))]
    recalibrate_batchnorm(model, data.x_train, batch=128, batches=8, generator=torch.Generator().manual_seed(0))
    rows.append(("clean, BatchNorm statistics re-estimated on clean images", acc(x)))
    print(f"| {args.tag}, eps {eps:g}, {len(x)} images | accuracy % |\n|---|---|")
    for name, value in rows:
        print(f"| {name} | {value:.1f} |")


if __name__ == "__main__":
    main()
