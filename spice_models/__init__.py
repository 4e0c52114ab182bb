"""MOSFET model cards and technology descriptions (JSON) shipped with cimcosim.

The model cards themselves are not copied into this repository: the built-in ``freepdk45`` technology
locates the FreePDK45 BSIM4 cards inside the installed ``openram`` wheel (see ``README.md``).
"""

from pathlib import Path

TECHNOLOGY_DIR = Path(__file__).resolve().parent

__all__ = ["TECHNOLOGY_DIR"]
