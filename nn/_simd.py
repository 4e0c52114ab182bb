"""The fused engine's optional AVX-512 readout (``nn/_simd.c``), loaded for numba's kernels to call.

``ngspice_setup.sh`` compiles ``nn/_simd.c`` into ``nn/libcimsimd.so`` with the system C compiler. Where that library
is present, current (its ABI number matches) and the CPU has AVX-512 (F, BW, VL, DQ), its symbols are loaded
into numba's symbol table and :data:`ENABLED` is true: :mod:`nn.fused_columns` then reads noisy bit-serial
readings through cut tables (a chip's per-column Gaussian cuts, noise tables, Gaussian noise without offsets)
with :func:`column_codes` (the cut entries held in registers) and :func:`column_add`. Otherwise the kernels
keep their numba code and the engine's results do not change: both paths give the same output bit for bit
(tested).

The kernel always links against the library's symbols; where the library is not loaded they resolve to numba
``cfunc`` s with the same contract (:func:`_column_codes_scalar`, :func:`_column_add_scalar`), which the engine
then never calls (it passes no column tables); the tests compare both implementations with the numba readout.
"""

from __future__ import annotations

import ctypes
import logging
import os
from pathlib import Path

import numpy as np

from nn._numba_prims import AVAILABLE
from nn.fused_noise import WIDE, WIDE_WINDOW

logger = logging.getLogger(__name__)

ABI = 6  # CIM_SIMD_ABI of nn/_simd.c
ROWS = 64  # partial-sum rows of a lane table's first half (0-31 held in registers, 32-63 loaded where needed)
MAX_LANE_ROWS = 2 * ROWS + 1  # lane rows a table may need: 128 held (the next 64 from memory), the 129th (a
#   128-row array's partial sum 128) read through the wide rows
HEADER = 8  # uint16 at a column table's end: its lane rows (64 or 128), the first row the lanes do not hold
MAX_TABLE_BYTES = 2**27  # a layer's per-column tables up to 128 MiB; beyond, numba's code (a VGG-8 chip's 64-tile
#   classifier layer would need 291 MB to read 16 rows a batch)


def lane_rows(m: int) -> int:
    """Lane rows of a column table whose entries span ``m`` partial sums: 64, or 128 beyond."""
    return ROWS if m <= ROWS else 2 * ROWS


def table_bytes(m: int, n_wide: int) -> int:
    """Bytes of one column table of entries over ``m`` partial sums and ``n_wide`` wide rows."""
    return 2 * (8 * lane_rows(m) + WIDE * n_wide + HEADER)
LIBRARY = Path(__file__).with_name("libcimsimd.so")


def _load() -> bool:
    """Load nn/libcimsimd.so into numba's symbol table if it is usable here; say why not otherwise."""
    if os.environ.get("CIMCOSIM_SIMD", "1") == "0":
        logger.info("CIMCOSIM_SIMD=0: the fused engine runs its numba readout only")
        return False
    if not LIBRARY.exists():
        logger.info("%s is not built (./ngspice_setup.sh builds it): the fused engine runs its numba readout",
                    LIBRARY)
        return False
    try:
        lib = ctypes.CDLL(str(LIBRARY))
        abi, level = int(lib.cim_simd_abi()), int(lib.cim_simd_level())
    except (OSError, AttributeError) as exc:
        logger.warning("cannot load %s (%s); rebuild it with ./ngspice_setup.sh", LIBRARY, exc)
        return False
    if abi != ABI:
        logger.warning("%s is stale (ABI %d, this code needs %d); rebuild it with ./ngspice_setup.sh",
                       LIBRARY, abi, ABI)
        return False
    if level < 1:
        logger.info("this CPU lacks AVX-512 (F, BW, VL, DQ): the fused engine runs its numba readout")
        return False
    import llvmlite.binding as llvm

    llvm.load_library_permanently(str(LIBRARY))
    return True


ENABLED = AVAILABLE and _load()

if AVAILABLE:
    from numba import carray, cfunc, types

    def _column_codes_scalar(s_p, words_p, lane, table_p, s_lo, rows, n_wide, limit, n, code_p, slow_p):
        """``cim_column_codes`` of nn/_simd.c, one reading at a time."""
        s, words = carray(s_p, (n,)), carray(words_p, (n,))
        table, code = carray(table_p, (8 * rows + WIDE * n_wide,)), carray(code_p, (n,))
        slow = carray(slow_p, (n,))
        sh = np.uint64(16 * lane + 1)
        any_slow = 0
        for i in range(n):
            r = min(max(np.int64(s[i]) - s_lo, 0), n_wide - 1)
            rl = min(r, rows - 1)
            u = np.uint16((words[i] >> sh) & np.uint64(0x7FFF))
            k = np.int64(table[7 * rows + rl])
            bad = u < table[rl] or u >= table[6 * rows + rl] or r >= limit
            for j in range(7):
                bad = bad or u == table[j * rows + rl]
                if 1 <= j <= 5 and u >= table[j * rows + rl]:
                    k += 1
            if bad:  # the wide row
                row = table[8 * rows + WIDE * r: 8 * rows + WIDE * (r + 1)]
                k = np.int64(row[WIDE_WINDOW + 1])
                bad = u < row[0] or u >= row[WIDE_WINDOW]
                for j in range(WIDE_WINDOW + 1):
                    bad = bad or u == row[j]
                    if 1 <= j <= WIDE_WINDOW - 1 and u >= row[j]:
                        k += 1
            code[i] = np.uint16(k)
            slow[i] = 1 if bad else 0
            any_slow |= slow[i]
        return np.int64(any_slow)

    def _column_add_scalar(code_p, nb, planes, bw_p, lev_p, n_lev, w, acc_p):
        """``cim_column_add`` of nn/_simd.c, one reading at a time."""
        code, bw = carray(code_p, (nb * planes,)), carray(bw_p, (planes,))
        lev, acc = carray(lev_p, (n_lev,)), carray(acc_p, (nb,))
        for p in range(planes):
            for mi in range(nb):
                acc[mi] += bw[p] * lev[code[p * nb + mi]] * w

    _i64, _u16, _f64, _ptr = types.int64, types.uint16, types.float64, types.CPointer
    _CODES = (types.int64(_ptr(types.int16), _ptr(types.uint64), _i64, _ptr(_u16), _i64, _i64, _i64, _i64, _i64,
                          _ptr(_u16), _ptr(types.uint8)), _column_codes_scalar)
    _ADD = types.void(_ptr(_u16), _i64, _i64, _ptr(_f64), _ptr(_f64), _i64, _f64, _ptr(_f64)), _column_add_scalar

    def _external(name: str, sig, scalar):  # noqa: ANN001, ANN202 - numba signatures
        """numba's declaration of the C function ``name`` (pointers passed as ``array.ctypes.data``); where the
        library is not loaded the symbol resolves to ``scalar`` compiled as a ``cfunc``."""
        if not ENABLED:
            import llvmlite.binding as llvm

            llvm.add_symbol(name, cfunc(sig, cache=True)(scalar).address)
        return types.ExternalFunction(name, sig.return_type(*(types.voidptr if isinstance(a, types.CPointer) else a
                                                              for a in sig.args)))

    column_codes = _external("cim_column_codes", *_CODES)
    """``cim_column_codes(s, words, lane, table, s_lo, rows, n_wide, limit, n, code, slow) -> any slow``."""
    column_add = _external("cim_column_add", *_ADD)
    """``cim_column_add(code, nb, planes, bw, lev, n_lev, w, acc)``."""


def column_tables(cuts: np.ndarray, wide: np.ndarray) -> np.ndarray | None:
    """Column tables [T, C, 8 rows + WIDE n + HEADER] uint16 of by-column cut entries ``cuts`` [T, C, m, 2] and
    wide rows ``wide`` [T, C, n, WIDE] (:func:`nn.fused_noise.wide_gaussian`, ``wide_table``; m <= n: the
    entries may be cut short where their trailing rows repeat): the entries' 16-bit lanes transposed (lane j of
    partial-sum index r at j * rows + r; rows = 64, or 128 for m > 64; rows past m repeat the last), then the
    wide rows, then the header (rows, and the first partial-sum index the lanes do not hold: n, or 128 where
    m = 129). None where m > 129 or n > 32768 (the numba code or the row kernel reads those)."""
    tiles, cols, m, _ = cuts.shape
    n = wide.shape[2]
    if m > MAX_LANE_ROWS or n > 2**15:  # (the C code holds row indices, and n - 1, in int16)
        return None
    rows = lane_rows(m)
    held = min(m, rows)
    out = np.zeros((tiles, cols, 8 * rows + WIDE * n + HEADER), np.uint16)
    lanes = out[..., : 8 * rows].reshape(tiles, cols, 8, rows)
    entries = np.ascontiguousarray(cuts[:, :, :held]).view(np.uint16).reshape(tiles, cols, held, 8)
    lanes[..., :held] = entries.transpose(0, 1, 3, 2)
    lanes[..., held:] = lanes[..., held - 1 : held]
    out[..., 8 * rows : 8 * rows + WIDE * n] = wide.reshape(tiles, cols, WIDE * n)
    out[..., -HEADER] = rows
    out[..., -HEADER + 1] = n if m <= rows else rows
    return out
