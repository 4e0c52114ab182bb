"""numba primitives shared by the fused engine's kernels: POPCNT, a counter-based random stream and a
ziggurat normal on it (every reading gets its own draw, independent of threads and chunks)."""

from __future__ import annotations

import hashlib
import math
import os
from pathlib import Path

import numpy as np

ENGINE_SOURCES = ("_numba_prims.py", "_simd.py", "fused_noise.py", "fused_pack.py", "fused_buckets.py",
                  "fused_columns.py", "fused.py")
"""The files whose numba functions inline each other (one cache key for all of them)."""

try:  # numba is a dependency of the project; without it the engine falls back to the torch path
    import numba
    from numba import njit, types
    from numba.extending import intrinsic

    # numba's on-disk cache checks only the file that defines a function, but our kernels inline functions
    # of the other engine files: an edit of one file would leave stale inlined code in another's cache
    # (seen: a changed table layout in fused_noise.py read through fused.py's cached kernel). Caches are
    # therefore kept per content hash of all the engine's numba sources, unless NUMBA_CACHE_DIR is set.
    if not os.environ.get("NUMBA_CACHE_DIR"):
        _here = Path(__file__).resolve().parent
        _digest = hashlib.sha256(b"".join((_here / f).read_bytes() for f in ENGINE_SOURCES)).hexdigest()[:16]
        numba.config.CACHE_DIR = str(_here / "__pycache__" / f"numba-{_digest}")  # type: ignore[attr-defined]

    # numba's OpenMP layer leaves its threads spin-waiting after every parallel region; on a CPU shared
    # with torch's own OpenMP pool that slowed every following torch op ~20x (measured: relu of 160k floats
    # 0.05 ms -> 1 ms). The workqueue layer's threads sleep between regions.
    if numba.config.THREADING_LAYER == "default":  # type: ignore[attr-defined]
        numba.config.THREADING_LAYER = "workqueue"  # type: ignore[attr-defined]
    AVAILABLE = True
except ImportError:  # pragma: no cover
    AVAILABLE = False


def _ziggurat_tables() -> tuple[float, np.ndarray, np.ndarray, np.ndarray]:
    """Marsaglia and Tsang (2000), "The ziggurat method for generating random variables", 128 layers for the
    standard normal, on 31-bit magnitudes: (R, kn, wn, fn)."""
    m1, dn, vn = 2.0**31, 3.442619855899, 9.91256303526217e-3
    tn, q = dn, vn / math.exp(-0.5 * dn * dn)
    kn, wn, fn = np.zeros(128), np.zeros(128), np.zeros(128)
    kn[0], kn[1] = (dn / q) * m1, 0.0
    wn[0], wn[127] = q / m1, dn / m1
    fn[0], fn[127] = 1.0, math.exp(-0.5 * dn * dn)
    for i in range(126, 0, -1):
        dn = math.sqrt(-2.0 * math.log(vn / dn + math.exp(-0.5 * dn * dn)))
        kn[i + 1] = (dn / tn) * m1
        tn = dn
        fn[i] = math.exp(-0.5 * dn * dn)
        wn[i] = dn / m1
    return 3.442619855899, kn, wn, fn


_ZIG_R, _ZIG_KN, _ZIG_WN, _ZIG_FN = _ziggurat_tables()

if AVAILABLE:

    @intrinsic
    def _popcount(typingctx, x):  # noqa: ARG001 - numba's intrinsic signature
        """LLVM ctpop on a uint64 (one POPCNT instruction on x86-64)."""
        sig = types.uint64(types.uint64)

        def codegen(context, builder, signature, args):  # noqa: ARG001
            return builder.ctpop(args[0])

        return sig, codegen

    @njit(cache=True, inline="always")
    def _mix(z):
        """splitmix64 finalizer: a well-mixed 64-bit value of a 64-bit counter."""
        z = (z ^ (z >> np.uint64(30))) * np.uint64(0xBF58476D1CE4E5B9)
        z = (z ^ (z >> np.uint64(27))) * np.uint64(0x94D049BB133111EB)
        return z ^ (z >> np.uint64(31))

    @njit(cache=True, inline="always")
    def _bits(seed, key, j):
        """64 random bits number ``j`` of reading ``key`` under ``seed`` (j > 0: the rare extra draws)."""
        if j != 0:
            seed = _mix(seed + np.uint64(j) * np.uint64(0xD1B54A32D192ED03))
        return _mix(seed + (key + np.uint64(1)) * np.uint64(0x9E3779B97F4A7C15))

    @njit(cache=True, inline="always")
    def _uniform(seed, key, j=0):
        """Uniform in [0, 1) of reading ``key`` under ``seed`` (53 random bits)."""
        return np.float64(_bits(seed, key, j) >> np.uint64(11)) * (1.0 / 9007199254740992.0)

    @njit(cache=True)
    def _normal_tail(seed, key, z, kn, wn, fn):
        """The ziggurat's rare branches (about 1.2 % of draws): the wedges and the tail beyond R."""
        j = 1
        while True:
            iz = np.int64(z & np.uint64(127))
            hz = np.float64(z >> np.uint64(33)) * (1.0 if (z >> np.uint64(32)) & np.uint64(1) else -1.0)
            x = hz * wn[iz]
            if abs(hz) < kn[iz]:
                return x
            if iz == 0:  # tail: Marsaglia's exponential rejection beyond R
                while True:
                    xt = -math.log(1.0 - _uniform(seed, key, j)) / _ZIG_R
                    yt = -math.log(1.0 - _uniform(seed, key, j + 1))
                    j += 2
                    if yt + yt >= xt * xt:
                        return _ZIG_R + xt if hz > 0 else -_ZIG_R - xt
            if fn[iz] + _uniform(seed, key, j) * (fn[iz - 1] - fn[iz]) < math.exp(-0.5 * x * x):
                return x
            z = _bits(seed, key, j + 1)
            j += 2

    @njit(cache=True, inline="always")
    def _normal(seed, key):
        """Standard normal of reading ``key``: Marsaglia-Tsang ziggurat (128 layers) on the reading's own
        counter stream; one draw, a compare and a multiply in 98.8 % of calls (Box-Muller's log, sqrt and
        cos were ~5x the noise-free readout)."""
        z = _bits(seed, key, 0)
        iz = np.int64(z & np.uint64(127))
        hz = np.float64(z >> np.uint64(33)) * (1.0 if (z >> np.uint64(32)) & np.uint64(1) else -1.0)
        if abs(hz) < _ZIG_KN[iz]:
            return hz * _ZIG_WN[iz]
        return _normal_tail(seed, key, z, _ZIG_KN, _ZIG_WN, _ZIG_FN)
