"""Attacks: oracles (foolbox 3 on the same float model), norm-ball/box properties, state hygiene, EOT."""

from __future__ import annotations

import pytest
import torch

from nn.attacks import CWL0, CWL2, EOT, FGSM, PGD, AttackError, CWLinf, Square, norms
from nn.attacks.square import p_selection
from nn.data import fashion_mnist


@pytest.fixture(scope="module")
def float_model():
    """A small float CNN trained for a few epochs on 1,000 Fashion-MNIST images, and 40 test images it gets
    right."""
    torch.manual_seed(0)
    x, y = fashion_mnist(True, limit=1000).tensors
    model = torch.nn.Sequential(torch.nn.Conv2d(1, 8, 3, padding=1), torch.nn.ReLU(), torch.nn.MaxPool2d(2),
                                torch.nn.Conv2d(8, 16, 3, padding=1), torch.nn.ReLU(), torch.nn.MaxPool2d(2),
                                torch.nn.Flatten(), torch.nn.Linear(16 * 49, 10))
    opt = torch.optim.Adam(model.parameters(), 2e-3)
    for _ in range(4):
        for i in range(0, len(x), 100):
            loss = torch.nn.functional.cross_entropy(model(x[i:i + 100]), y[i:i + 100])
            opt.zero_grad()
            loss.backward()
            opt.step()
    model.zero_grad(set_to_none=True)
    model.eval()
    xt, yt = fashion_mnist(False, limit=200).tensors
    with torch.no_grad():
        ok = model(xt).argmax(1) == yt
    return model, xt[ok][:40], yt[ok][:40]


def _pred(model, x):
    with torch.no_grad():
        return model(x).argmax(1)


def test_cw_l2_matches_foolbox(float_model):
    fb = pytest.importorskip("foolbox", reason="foolbox is the oracle of the dev extra")
    model, x, y = float_model
    x, y = x[:16], y[:16]
    ours = CWL2(max_iterations=100, binary_search_steps=9)(model, x, y)
    ok = _pred(model, ours) != y
    _, theirs, fb_ok = fb.attacks.L2CarliniWagnerAttack(binary_search_steps=9, steps=100, stepsize=0.01,
                                                        confidence=0, initial_const=1e-3, abort_early=True)(
        fb.PyTorchModel(model, bounds=(0, 1)), x, y, epsilons=None)
    # foolbox starts its best examples at an all-zero image and returns it where the search found nothing (a
    # black image is usually "misclassified"); ours returns the original image there. Count real finds only.
    fb_ok = fb_ok & (theirs.flatten(1).abs().amax(1) > 0)
    assert ok.float().mean() >= fb_ok.float().mean()
    ours_l2 = norms(ours, x)["l2"][ok].median()
    theirs_l2 = (theirs - x).flatten(1).norm(dim=1)[fb_ok].median()
    assert ours_l2 <= 1.10 * theirs_l2


def test_pgd_matches_foolbox(float_model):
    fb = pytest.importorskip("foolbox", reason="foolbox is the oracle of the dev extra")
    model, x, y = float_model
    ours = PGD(eps=0.03, alpha=2 / 255, steps=10, seed=0)(model, x, y)
    rate = (_pred(model, ours) != y).float().mean()
    _, _, fb_ok = fb.attacks.LinfPGD(abs_stepsize=2 / 255, steps=10, random_start=True)(
        fb.PyTorchModel(model, bounds=(0, 1)), x, y, epsilons=0.03)
    assert abs(float(rate) - float(fb_ok.float().mean())) <= 0.1


@pytest.mark.parametrize("attack, norm, eps", [
    (PGD(eps=0.05, steps=5, seed=1), "linf", 0.05), (PGD(eps=1.0, alpha=0.2, steps=5, norm="l2", seed=1), "l2", 1.0),
    (FGSM(0.05), "linf", 0.05),
])
def test_examples_stay_in_the_ball_and_the_box(float_model, attack, norm, eps):
    model, x, y = float_model
    adv = attack(model, x, y)
    assert adv.shape == x.shape and adv.min() >= 0 and adv.max() <= 1
    assert (norms(adv, x)[norm] <= eps + 1e-5).all()
    assert (_pred(model, adv) != y).any()


@pytest.mark.parametrize("attack", [CWL2(max_iterations=50, binary_search_steps=4),
                                    CWLinf(max_iterations=30, initial_const=1e-2, decrease_factor=0.7),
                                    CWL0(max_iterations=30, initial_const=1e-1, largest_const=1e2)])
def test_cw_success_means_the_label_changed(float_model, attack):
    model, x, y = float_model
    x, y = x[:4], y[:4]
    adv = attack(model, x, y)
    changed = (adv - x).flatten(1).abs().amax(1) > 0
    assert changed.any() and adv.min() >= 0 and adv.max() <= 1
    assert (_pred(model, adv)[changed] != y[changed]).all()  # anything returned besides the original is adversarial


def test_cw_norms_follow_their_objectives(float_model):
    """L0 changes fewer pixels than L2; L-inf has the smallest largest change."""
    model, x, y = float_model
    x, y = x[:6], y[:6]
    a2 = CWL2(max_iterations=200, binary_search_steps=3, initial_const=1.0)(model, x, y)
    a0 = CWL0(max_iterations=30, initial_const=1e-1, largest_const=1e2)(model, x, y)
    ai = CWLinf(max_iterations=30, initial_const=1e-2, decrease_factor=0.7)(model, x, y)
    both = (_pred(model, a2) != y) & (_pred(model, a0) != y) & (_pred(model, ai) != y)
    assert both.sum() >= 4
    n2, n0, ni = norms(a2, x), norms(a0, x), norms(ai, x)
    assert n0["l0"][both].median() < n2["l0"][both].median()
    assert ni["linf"][both].median() < n2["linf"][both].median()


def test_attacks_leave_the_model_alone_and_reject_bad_input(float_model):
    model, x, y = float_model
    model.zero_grad(set_to_none=True)  # foolbox (the oracle tests) leaves parameter gradients behind
    model.train()
    before = {k: v.clone() for k, v in model.state_dict().items()}
    PGD(steps=2, seed=0)(model, x[:4], y[:4])
    CWL2(max_iterations=5, binary_search_steps=1)(model, x[:4], y[:4])
    assert model.training and all(torch.equal(before[k], v) for k, v in model.state_dict().items())
    assert all(p.grad is None and p.requires_grad for p in model.parameters())
    model.eval()
    with pytest.raises(AttackError, match=r"in \[0, 1\]"):
        PGD()(model, x[:2] * 3, y[:2])
    with pytest.raises(AttackError, match="eps"):
        PGD(eps=0)
    with pytest.raises(AttackError, match="eps"):
        FGSM(eps=1.5)


def test_eot_over_models_averages_their_gradients(float_model):
    """EOT over two copies of a model equals the attack on the model itself (same gradients, averaged)."""
    model, x, y = float_model
    import copy

    twin = copy.deepcopy(model)
    a = PGD(steps=3, seed=2, random_start=False)(model, x[:8], y[:8])
    b = EOT(PGD(steps=3, seed=2, random_start=False), models=[model, twin])(model, x[:8], y[:8])
    assert torch.allclose(a, b, atol=1e-6)


def test_eot_restarts_judge_the_population_not_the_ignored_model(float_model):
    """With ``models`` the attacked model is ignored: PGD's restarts must be judged on the population's mean
    logits too (they were judged on the ignored model), and the result equals restarts on the model itself."""
    model, x, y = float_model
    import copy

    class Refuse(torch.nn.Module):
        def forward(self, x: torch.Tensor) -> torch.Tensor:
            raise AssertionError("the ignored model was called")

    twin = copy.deepcopy(model)
    a = PGD(eps=0.04, alpha=0.01, steps=3, seed=5, restarts=3)(model, x[:16], y[:16])
    b = EOT(PGD(eps=0.04, alpha=0.01, steps=3, seed=5, restarts=3), models=[model, twin])(Refuse(), x[:16], y[:16])
    assert torch.allclose(a, b, atol=1e-6)


class _Flipped(torch.nn.Module):
    """A second member with other decision boundaries: the model on the mirrored image, logits x ``scale``."""

    def __init__(self, model: torch.nn.Module, scale: float) -> None:
        super().__init__()
        self.model, self.scale = model, scale

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.scale * self.model(x.flip(-1))


def test_eot_success_all_counts_an_example_only_when_every_member_is_fooled(float_model):
    """C&W on the mean logits of two members, one of them 4x as confident, stops at examples the confident one
    carries alone; with ``success="all"`` every example returned fools both members."""
    model, x, y = float_model
    members = [model, _Flipped(model, 4.0)]
    x, y = x[:16], y[:16]
    with torch.no_grad():
        both_right = (_pred(members[0], x) == y) & (_pred(members[1], x) == y)
    x, y = x[both_right], y[both_right]

    def attack(success: str) -> tuple[torch.Tensor, torch.Tensor]:
        adv = EOT(CWL2(max_iterations=100, binary_search_steps=6, initial_const=0.1), models=members,
                  success=success)(model, x, y)
        found = (adv - x).flatten(1).abs().amax(1) > 0
        fooled = torch.stack([_pred(m, adv) != y for m in members])
        return found, fooled

    found_mean, fooled_mean = attack("mean")
    assert (found_mean & ~fooled_mean.all(0)).any()  # the mean was fooled, one member was not
    found, fooled = attack("all")
    assert found.float().mean() >= 0.5
    assert fooled[:, found].all()
    assert (found & fooled.all(0)).sum() > (found_mean & fooled_mean.all(0)).sum()
    with pytest.raises(AttackError, match="success"):
        EOT(CWL2(), models=members, success="any")


def test_pgd_confidence_is_a_hinge_that_lets_the_unfooled_member_drive(float_model):
    """``confidence=kappa`` clamps each margin at kappa: an image (a member, under EOT) fooled by more than kappa
    gives no gradient. Alone, an image the model already gets wrong does not move; through EOT over two members,
    one 10x as confident, the confident member stops carrying the mean once fooled, so more images fool both."""
    model, x, y = float_model
    wrong = (y + 1) % 10  # labels the model already loses on: margin > 0
    with pytest.raises(AttackError, match="confidence"):
        PGD(confidence=0.0)  # cross-entropy has no margin to clamp
    with pytest.raises(AttackError, match="confidence"):
        PGD(loss="margin", confidence=float("inf"))
    with pytest.raises(AttackError, match="confidence"):
        PGD(loss="margin", confidence=-1.0)
    still = PGD(eps=0.05, alpha=0.01, steps=5, loss="margin", random_start=False, confidence=0.0)(model, x, wrong)
    assert torch.equal(still, x)
    moved = PGD(eps=0.05, alpha=0.01, steps=5, loss="margin", random_start=False)(model, x, wrong)
    assert not torch.equal(moved, x)
    members = [model, _Flipped(model, 10.0)]
    with torch.no_grad():
        both_right = (_pred(members[0], x) == y) & (_pred(members[1], x) == y)
    x, y = x[both_right], y[both_right]

    def fool_both(confidence: float | None) -> int:
        adv = EOT(PGD(eps=0.05, alpha=0.05 / 8, steps=20, seed=1, loss="margin", confidence=confidence),
                  models=members)(model, x, y)
        return int(torch.stack([_pred(m, adv) != y for m in members]).all(0).sum())

    assert fool_both(0.0) > fool_both(None)


def test_adversarial_training_keeps_batchnorm_statistics_clean():
    # statistics averaged over clean and adversarial batches fit neither (clean accuracy 28 %, 60 % after
    # re-estimating them on clean images): only the clean forward of each step updates them
    from nn.attacks import PGD
    from nn.training import train_steps

    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Conv2d(1, 4, 3), torch.nn.BatchNorm2d(4), torch.nn.ReLU(),
                                torch.nn.Flatten(), torch.nn.Linear(4 * 26 * 26, 10))
    bn = model[1]
    x, y = torch.rand(64, 1, 28, 28), torch.randint(0, 10, (64,))
    opt = torch.optim.SGD(model.parameters(), lr=0.01)
    train_steps(model, opt, x, y, steps=3, batch=16, generator=torch.Generator().manual_seed(0),
                lr_at=lambda s: 0.01, adv=PGD(0.1, 0.03, steps=5, seed=1))
    assert int(bn.num_batches_tracked) == 3  # the clean forward of each step only (the adversarial one: 6)
    assert model.training


def test_pgd_restarts_attack_only_the_images_no_start_has_fooled(float_model):
    """Each restart runs on the images still standing (its batches shrink, never to an image already fooled), and
    the result fools at least the images the first start fooled."""
    model, x, y = float_model
    batches: list[int] = []

    class Counting(torch.nn.Module):
        def forward(self, z: torch.Tensor) -> torch.Tensor:
            batches.append(len(z))
            return model(z)

    attack = PGD(eps=0.03, alpha=0.01, steps=2, seed=3, restarts=3)
    adv = attack(Counting(), x, y)
    fooled_first = len(x) - batches[3]  # one start: 2 gradient forwards and 1 judging forward, then restart 2
    assert 0 < fooled_first < len(x), batches
    assert batches[:3] == [len(x)] * 3 and len(x) > batches[3] >= batches[-1] > 0, batches
    assert int((_pred(model, adv) != y).sum()) >= fooled_first


def test_pgd_restarts_keep_every_image_the_first_start_fooled(float_model):
    """R restarts begin with the single-start run (same seed, same first draw) and never give up a fooling
    example, so they fool a superset of its images, inside the same ball."""
    model, x, y = float_model
    for loss in ("ce", "margin"):
        one = PGD(eps=0.04, alpha=0.01, steps=3, seed=5, loss=loss)(model, x, y)
        many = PGD(eps=0.04, alpha=0.01, steps=3, seed=5, loss=loss, restarts=4)(model, x, y)
        f1, f4 = _pred(model, one) != y, _pred(model, many) != y
        assert bool((f1 <= f4).all()), loss
        assert (many - x).abs().max() <= 0.04 + 1e-6
    with pytest.raises(AttackError, match="loss"):
        PGD(loss="hinge")
    with pytest.raises(AttackError, match="restarts"):
        PGD(restarts=2, random_start=False)


def test_margin_loss_is_positive_exactly_when_the_label_lost(float_model):
    from nn.attacks._base import margin_loss

    model, x, y = float_model
    adv = PGD(eps=0.1, alpha=0.02, steps=10, seed=0, loss="margin")(model, x, y)
    with torch.no_grad():
        logits = model(adv)
    fooled = logits.argmax(1) != y
    assert fooled.any() and (~fooled).any()
    assert torch.equal(margin_loss(logits, y) > 0, fooled)


def test_cw_l0_batched_equals_one_image_at_a_time(float_model):
    """Each image runs its rounds on its own clock: the batch gives every image what it gets alone."""
    import copy

    model, x, y = float_model
    model64, x, y = copy.deepcopy(model).double(), x[:4].double(), y[:4]
    attack = CWL0(max_iterations=30, initial_const=1e-1, largest_const=1e2)
    batched = attack(model64, x, y)
    alone = torch.cat([attack(model64, x[i:i + 1], y[i:i + 1]) for i in range(len(x))])
    assert torch.allclose(batched, alone, atol=1e-9)
    assert (norms(batched, x)["l0"] > 0).any()


def test_cw_l0_reports_progress(float_model, caplog, monkeypatch):
    """An L0 run has no fixed length: it logs how many images are still searching every PROGRESS_STEPS steps."""
    import nn.attacks.cw_l0 as cw_l0

    monkeypatch.setattr(cw_l0, "PROGRESS_STEPS", 7)
    model, x, y = float_model
    with caplog.at_level("INFO", logger="nn.attacks.cw_l0"):
        CWL0(max_iterations=10, initial_const=1e-1, largest_const=1e1)(model, x[:3], y[:3])
    lines = [r.getMessage() for r in caplog.records if r.name == "nn.attacks.cw_l0"]
    assert lines and lines[0].startswith("C&W L0: step 7, ") and "of 3 images still searching" in lines[0]


def test_square_stays_in_the_ball_stops_when_fooled_and_repeats_per_seed(float_model):
    model, x, y = float_model
    attack = Square(eps=0.1, queries=300, seed=3)
    adv = attack(model, x, y)
    assert adv.shape == x.shape and adv.min() >= 0 and adv.max() <= 1
    assert (norms(adv, x)["linf"] <= 0.1 + 1e-6).all()
    fooled = _pred(model, adv) != y
    assert fooled.float().mean() >= 0.15
    used = attack.queries_used
    assert used.shape == (len(x),) and used.min() >= 1 and used.max() <= 300
    assert (used[fooled] < 300).all() and (used[~fooled] == 300).all()  # an image stops exactly when fooled
    assert torch.equal(Square(eps=0.1, queries=300, seed=3)(model, x, y), adv)
    assert not torch.equal(Square(eps=0.1, queries=300, seed=4)(model, x, y), adv)


def test_square_breaks_a_model_whose_gradients_are_masked(float_model):
    """Rounding the input to 17 levels gives every input gradient 0: PGD is left with its random start, the
    gradient-free Square Attack does about as well as on the unmasked model."""
    model, x, y = float_model

    class Round(torch.nn.Module):
        def forward(self, z: torch.Tensor) -> torch.Tensor:
            return torch.round(z * 16) / 16

    masked = torch.nn.Sequential(Round(), model).eval()
    ok = _pred(masked, x) == y
    x, y = x[ok], y[ok]
    pgd = (_pred(masked, PGD(0.1, 0.025, 20, seed=0)(masked, x, y)) != y).float().mean()
    square = (_pred(masked, Square(0.1, 300, seed=0)(masked, x, y)) != y).float().mean()
    plain = (_pred(model, Square(0.1, 300, seed=0)(model, x, y)) != y).float().mean()
    assert pgd <= 0.1 and square >= pgd + 0.15 and square >= plain - 0.1


def test_square_under_eot_reads_mean_logits_and_rejects_bad_input(float_model):
    model, x, y = float_model
    x, y = x[:8], y[:8]
    calls = []

    class Counting(torch.nn.Module):
        def forward(self, z: torch.Tensor) -> torch.Tensor:
            calls.append(len(z))
            return model(z)

    counted = Counting()
    alone = Square(0.1, 50, seed=1)(counted, x, y)
    n_alone = len(calls)
    calls.clear()
    # a deterministic model: the mean of 3 reads is the read itself, so the search is the same at 3x the calls
    assert torch.equal(EOT(Square(0.1, 50, seed=1), samples=3)(counted, x, y), alone)
    assert len(calls) == 3 * n_alone
    assert p_selection(0.05, 0, 1000) == 0.05 and p_selection(0.05, 999, 1000) == 0.05 / 512
    for bad in (dict(eps=0), dict(eps=1.5), dict(queries=0), dict(p_init=0), dict(p_init=2)):
        with pytest.raises(AttackError):
            Square(**bad)
    assert Square()(model, x[:0], y[:0]).shape == (0, *x.shape[1:])  # no image: no query
    with pytest.raises(AttackError, match=r"\[B, C, H, W\]"):
        Square()(torch.nn.Linear(784, 10), x.flatten(1), y)


def test_square_with_common_random_numbers_sees_through_read_noise(float_model):
    """Logit noise of sd 0.1 stalls the plain search (a lucky read becomes the bar, a lucky read stops an image);
    reading candidate and best under the same noise (``reseed``) does about as well as on the noise-free model."""
    model, x, y = float_model

    class Noisy(torch.nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.gen = torch.Generator().manual_seed(0)

        def reseed(self, seed: int) -> None:
            self.gen.manual_seed(seed)

        def forward(self, z: torch.Tensor) -> torch.Tensor:
            out = model(z)
            return out + 0.1 * torch.randn(out.shape, generator=self.gen)

    noisy = Noisy().eval()
    plain = (_pred(model, Square(0.1, 300, seed=0)(noisy, x, y)) != y).float().mean()
    attack = Square(0.1, 300, seed=0, reseed=noisy.reseed)
    crn = (_pred(model, attack(noisy, x, y)) != y).float().mean()  # scored on the noise-free (expected) model
    clean = (_pred(model, Square(0.1, 300, seed=0)(model, x, y)) != y).float().mean()
    assert plain <= 0.1 and crn >= plain + 0.1 and crn >= clean - 0.1
    assert (attack.queries_used == 2 * 300 - 1).all()  # two reads an iteration, no early stop on a noisy read
