#!/usr/bin/env bash
# Set up everything cimcosim needs on Debian/Ubuntu; safe to re-run (each step checks before it acts).
#   apt: ngspice, libngspice0, libngspice0-dev (the unversioned libngspice.so PySpice loads),
#        dataset-fashion-mnist (the embedded default dataset), gcc (the fused engine's AVX-512 readout)
#   .venv: torch (CPU 2.13.0 where it is on disk), the project with its dev extra, openram==1.2.48
#          (no dependencies: only its FreePDK45 model cards are used)
# Ends with a one-resistor ngspice operating point through PySpice to prove the chain works.
set -euo pipefail
cd "$(dirname "$0")"

APT_PACKAGES=(ngspice libngspice0 libngspice0-dev dataset-fashion-mnist gcc)
missing=()
for pkg in "${APT_PACKAGES[@]}"; do
  dpkg-query -W -f='${Status}' "$pkg" 2>/dev/null | grep -q "install ok installed" || missing+=("$pkg")
done
if ((${#missing[@]})); then
  if ! command -v apt-get >/dev/null 2>&1; then
    echo "ngspice_setup.sh: no apt-get on this machine; install these yourself and re-run:" \
         "ngspice with its shared library (libngspice.so, ngspice >= 36), the Fashion-MNIST idx files" \
         "(set CIMCOSIM_FASHION_MNIST to their folder), Python >= 3.11" >&2
    exit 1
  fi
  SUDO=()
  if [ "$(id -u)" -ne 0 ]; then
    command -v sudo >/dev/null 2>&1 || { echo "ngspice_setup.sh: need root or sudo to apt-get install ${missing[*]}" >&2; exit 1; }
    SUDO=(sudo)
  fi
  echo "ngspice_setup.sh: installing ${missing[*]}"
  "${SUDO[@]}" apt-get update -qq
  DEBIAN_FRONTEND=noninteractive "${SUDO[@]}" apt-get install -y -qq "${missing[@]}" >/dev/null
fi

PYTHON=${PYTHON:-python3}
"$PYTHON" -c 'import sys; sys.exit(sys.version_info < (3, 11))' || {
  echo "ngspice_setup.sh: $PYTHON is older than 3.11; set PYTHON=/path/to/python3.11" >&2; exit 1; }
[ -x .venv/bin/python ] || "$PYTHON" -m venv .venv
PIP=(.venv/bin/python -m pip -q --disable-pip-version-check)

if ! .venv/bin/python -c "import torch" >/dev/null 2>&1; then
  # The CPU build 2.13.0 lies on disk on this kind of machine; elsewhere fall back to the CPU wheel index.
  "${PIP[@]}" install "torch==2.13.0" 2>/dev/null \
    || "${PIP[@]}" install torch --index-url https://download.pytorch.org/whl/cpu
fi
"${PIP[@]}" install -e ".[dev]"
.venv/bin/python -c "import importlib.util, sys; sys.exit(importlib.util.find_spec('openram') is None)" || "${PIP[@]}" install --no-deps "openram==1.2.48"

# The fused engine's optional AVX-512 readout (nn/_simd.py says when it runs; without it, numba's code runs).
if [ ! nn/libcimsimd.so -nt nn/_simd.c ]; then
  if cc -O3 -ffp-contract=off -shared -fPIC -o nn/libcimsimd.so.tmp nn/_simd.c; then
    mv nn/libcimsimd.so.tmp nn/libcimsimd.so
  else
    echo "ngspice_setup.sh: could not compile nn/_simd.c; the fused engine will run its numba code only" >&2
  fi
fi

.venv/bin/python - <<'PY'
import logging
logging.getLogger("PySpice").setLevel(logging.ERROR)  # "Unsupported Ngspice version 39" is harmless
from PySpice.Spice.Netlist import Circuit
c = Circuit("setup check")
c.V("in", "a", c.gnd, 1.0)
c.R(1, "a", c.gnd, 1e3)
analysis = c.simulator(simulator="ngspice-shared").operating_point()
current = abs(float(analysis.branches["vin"][0]))
assert abs(current - 1e-3) < 1e-9, current
print(f"ngspice_setup.sh: ok (ngspice through PySpice: 1 V across 1 kOhm draws {current * 1e3:.3f} mA)")
PY
