"""Input and weight attacks, one per file, behind the small base class of :mod:`nn.attacks._base`.

Every input attack is configured once and called as ``attack(model, images, labels)``, returning adversarial
images in [0, 1]; it never changes the model's mode or parameters. :func:`norms` measures what it did. The weight attack
:class:`BFA` flips the bits the arrays store, in place.
"""

from nn.attacks._base import Attack, AttackError
from nn.attacks._cw import norms
from nn.attacks.bfa import BFA, StoredBits, random_flips
from nn.attacks.cw_l0 import CWL0
from nn.attacks.cw_l2 import CWL2
from nn.attacks.cw_linf import CWLinf
from nn.attacks.eot import EOT
from nn.attacks.fgsm import FGSM
from nn.attacks.pgd import PGD
from nn.attacks.square import Square
from nn.attacks.substitute import Substitute

__all__ = ["BFA", "CWL0", "CWL2", "EOT", "FGSM", "PGD", "Attack", "AttackError", "CWLinf",
           "Square", "StoredBits", "Substitute", "norms", "random_flips"]
