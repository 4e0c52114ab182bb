"""How much of a noisy model's answer is the draw? Clean predictions of a model with per-inference read noise under
K noise draws, and of its mean-field twin (every noisy reading replaced by its expected level).

Run: .venv/bin/python benchmarks/noise_draws.py --run-dir runs/fig4 --tag sn_b4_n2.4_3p5bit_adv [--draws 8]
     [--images 200] [--threads 1]
Prints, on the first N test images: the accuracy per draw (mean and spread), the share of images right under every
draw and under none, the mean agreement between two draws, the majority vote's accuracy, and the mean-field twin's
accuracy and agreement with the majority vote. A model whose draws disagree on a quarter of the images answers
partly at random: an attack scored under one draw meets that randomness, whatever the attack.
"""

from __future__ import annotations

import torch
from _cells import cell_parser, load_cell

from nn.convert import cim_layers, mean_field_twin
from nn.training import predict


def main() -> None:
    ap = cell_parser(__doc__)
    ap.add_argument("--draws", type=int, default=8)
    args = ap.parse_args()
    if args.draws < 2:
        ap.error("need --draws >= 2")
    model, _, data = load_cell(ap, args, need_noise="--draws")
    twin, noisy = mean_field_twin(model)
    x, y = data.x_test, data.y_test
    preds = []
    for draw in range(args.draws):
        for layer in cim_layers(model):
            layer.set_noise_seed(1000 + draw)
        preds.append(predict(model, x, args.images))
    p = torch.stack(preds)  # [K, N]
    right = (p == y).float()
    per_draw = 100 * right.mean(1)
    pair = (p[:, None] == p[None]).float().mean(-1)
    off_diag = pair[~torch.eye(args.draws, dtype=torch.bool)].mean()
    majority = torch.mode(p, 0).values
    tp = predict(twin, x, args.images)
    print(f"| {args.tag}, {args.images} images, {args.draws} draws | |\n|---|---|")
    for name, value in [
        ("accuracy per draw, mean (sd)", f"{per_draw.mean():.1f} ({per_draw.std():.1f})"),
        ("right under every draw", f"{100 * right.all(0).float().mean():.1f}"),
        ("right under no draw", f"{100 * (right.sum(0) == 0).float().mean():.1f}"),
        ("agreement of two draws", f"{off_diag:.3f}"),
        ("majority vote's accuracy", f"{100 * (majority == y).float().mean():.1f}"),
        (f"mean-field twin ({noisy} noisy layers): accuracy", f"{100 * (tp == y).float().mean():.1f}"),
        ("mean-field twin: agreement with the majority vote", f"{(tp == majority).float().mean():.3f}")]:
        print(f"| {name} | {value} |")


if __name__ == "__main__":
    main()
