"""Input and weight attacks, one per file, behind the small base class of :mod:`nn.attacks._base`."""

from nn.attacks._base import Attack, AttackError
from nn.attacks.pgd import PGD

__all__ = ["PGD", "Attack", "AttackError"]
