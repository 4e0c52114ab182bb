"""nn/_simd.c (the fused engine's AVX-512 readout) against its scalar twins and numba's readout, and how
nn/_simd.py decides whether to load it."""

from __future__ import annotations

import ctypes
import logging
import shutil
import subprocess

import numpy as np
import pytest

from nn import _simd, fused_columns, fused_noise

pytestmark = pytest.mark.skipif(not fused_columns.AVAILABLE, reason="numba not installed")

needs_lib = pytest.mark.skipif(not _simd.ENABLED, reason="nn/libcimsimd.so not built or no AVX-512 here")


_V, _I = ctypes.c_void_p, ctypes.c_int64
_ARGS = {"cim_column_codes": ([_V, _V, _I, _V, _I, _I, _I, _V, _V], _I),
         "cim_column_add": ([_V, _I, _I, _V, _V, _I, ctypes.c_double, _V], None)}


def _typed(fn, name: str):
    """``fn`` (a ctypes function) declared with ``name``'s C signature, pointers as addresses."""
    fn.argtypes, fn.restype = _ARGS[name]
    return fn


def _both(name: str, sig_and_fn):
    """(the library's function ``name``, its scalar twin compiled as a cfunc), callable through ctypes."""
    from numba import cfunc

    sig, fn = sig_and_fn
    return _typed(getattr(ctypes.CDLL(str(_simd.LIBRARY)), name), name), _typed(cfunc(sig)(fn).ctypes, name)


def _ptr(a: np.ndarray) -> int:
    return a.ctypes.data


def _column(seed: int, n_codes: int = 31):
    """Lane tables, by-column cuts and (s_lo, n_s) of one tile of 12 columns with offset thresholds."""
    rng = np.random.default_rng(seed)
    thr = np.empty((1, 12, n_codes + 2))
    thr[..., 0], thr[..., -1] = -np.inf, np.inf
    thr[..., 1:-1] = np.sort(np.arange(n_codes) + 0.5 + rng.normal(0, 0.6, (1, 12, n_codes)), axis=-1)
    s_lo, n_s = fused_noise.gaussian_range(thr, 0.4, -40, 200)
    cuts = fused_noise.gaussian_cuts(thr, s_lo, n_s, 0.4, by_column=True)
    return _simd.lane_tables(cuts), cuts, s_lo, n_s


def _readings(rng, cuts, c, s_lo, n_s, n, lane):
    """Partial sums (some beyond the table on both sides) and random words, a third of them set so that the
    reading's 15 bits equal one of its entry's cuts (ties: the slow path)."""
    s = rng.integers(s_lo - 6, s_lo + n_s + 6, n).astype(np.int64)
    words = rng.integers(0, 2**63, n, dtype=np.uint64) * np.uint64(2) + rng.integers(0, 2, n, dtype=np.uint64)
    lanes16 = cuts[0, c].view(np.uint16).reshape(n_s, 8)
    sh = np.uint64(16 * lane + 1)
    for i in np.flatnonzero(rng.random(n) < 0.33):
        cut = np.uint64(lanes16[min(max(s[i] - s_lo, 0), n_s - 1), rng.integers(0, 7)])
        words[i] = (words[i] & ~(np.uint64(0x7FFF) << sh)) | (cut << sh)
    return s, words


@needs_lib
@pytest.mark.parametrize("n", [1, 7, 31, 32, 100, 128, 257])
def test_column_codes_equal_numba_and_the_scalar_twin(n):
    """cim_column_codes gives numba's codes (nn.fused_columns._column_codes) wherever a reading is decided,
    the same slow-path flags (ties with a cut, readings outside the window) and the same any-slow answer, and
    so does its scalar twin; at every length (masked tails) and random-word lane."""
    fns = _both("cim_column_codes", _simd._CODES)
    lanes, cuts, s_lo, n_s = _column(n)
    rng = np.random.default_rng(100 + n)
    n_slow = 0
    for c in range(lanes.shape[1]):
        lane = c % 4
        s, words = _readings(rng, cuts, c, s_lo, n_s, n, lane)
        want_code, want_slow = np.empty(n, np.int64), np.empty(n, np.bool_)
        want_any = fused_columns._column_codes(s, words, lane, cuts, 0, c, s_lo, np.empty((2, n), np.uint64),
                                               want_code, want_slow)
        for fn in fns:
            code, slow = np.full(n, -1, np.int64), np.full(n, 7, np.uint8)
            got_any = fn(_ptr(s), _ptr(words), lane, _ptr(lanes[0, c]), s_lo, n_s, n, _ptr(code), _ptr(slow))
            assert bool(got_any) == want_any
            assert np.array_equal(slow.astype(bool), want_slow)
            assert np.array_equal(code[~want_slow], want_code[~want_slow])
        n_slow += int(want_slow.sum())
    assert n == 1 or n_slow > 0  # (the ties were exercised)


@needs_lib
@pytest.mark.parametrize("n_lev", [5, 16, 32, 40])
def test_column_add_equals_the_scalar_twin_bit_for_bit(n_lev):
    """cim_column_add adds (bw[p] * lev[code]) * w in plane order, each step rounded, like the scalar loop: the
    accumulators agree bit for bit, for levels in registers (<= 32) and gathered (more), any block length."""
    fns = _both("cim_column_add", _simd._ADD)
    rng = np.random.default_rng(n_lev)
    lev = rng.normal(0, 3, n_lev) * 1.37
    for nb, planes in ((1, 1), (7, 8), (16, 8), (17, 3)):
        code = rng.integers(0, n_lev, nb * planes).astype(np.int64)
        bw = rng.normal(0, 10, planes)
        acc0 = rng.normal(0, 1e3, nb)
        accs = []
        for fn in fns:
            acc = acc0.copy()
            fn(_ptr(code), nb, planes, _ptr(bw), _ptr(lev), n_lev, 0.3, _ptr(acc))
            accs.append(acc)
        assert np.array_equal(accs[0], accs[1]) and not np.array_equal(accs[0], acc0)


def test_lane_tables_hold_the_entries_transposed():
    """Lane j of a lane table's row r is the entry's 16-bit lane j (cuts 0-6, then the base code); rows past
    the entries repeat the last; more than 64 partial sums are refused."""
    lanes, cuts, s_lo, n_s = _column(3)
    assert lanes.shape == (1, 12, 8, 64) and lanes.dtype == np.uint16
    for c, r in ((0, 0), (5, n_s - 1), (11, n_s // 2)):
        w0, w1 = (int(v) for v in cuts[0, c, r])
        want = [(w0 >> (16 * j)) & 0xFFFF for j in range(4)] + [(w1 >> (16 * j)) & 0xFFFF for j in range(4)]
        assert lanes[0, c, :, r].tolist() == want
        assert lanes[0, c, 7, r] == w1 >> 48  # base
    assert (lanes[..., n_s:] == lanes[..., n_s - 1 : n_s]).all()
    with pytest.raises(ValueError, match="at most 64"):
        _simd.lane_tables(np.zeros((1, 1, 65, 2), np.uint64))


def test_the_library_is_left_unloaded_with_a_reason(tmp_path, monkeypatch, caplog):
    """nn/_simd.py loads nothing when told not to, when the library is missing, when the file is not a
    library, or when it is stale (another ABI), and says which in the log; the engine keeps numba's code."""
    caplog.set_level(logging.INFO, logger="nn._simd")
    monkeypatch.setenv("CIMCOSIM_SIMD", "0")
    assert not _simd._load() and "CIMCOSIM_SIMD=0" in caplog.text
    monkeypatch.delenv("CIMCOSIM_SIMD")
    monkeypatch.setattr(_simd, "LIBRARY", tmp_path / "missing.so")
    assert not _simd._load() and "is not built" in caplog.text
    junk = tmp_path / "junk.so"
    junk.write_text("not a shared library")
    monkeypatch.setattr(_simd, "LIBRARY", junk)
    assert not _simd._load() and "cannot load" in caplog.text
    cc = shutil.which("cc")
    if cc is not None:  # (ngspice_setup.sh installs gcc: the stale case runs wherever the library was built)
        src = tmp_path / "stale.c"
        src.write_text("long cim_simd_abi(void) { return 0; }\nlong cim_simd_level(void) { return 1; }\n")
        stale = tmp_path / "stale.so"
        subprocess.run([cc, "-shared", "-fPIC", "-o", str(stale), str(src)], check=True)
        monkeypatch.setattr(_simd, "LIBRARY", stale)
        assert not _simd._load() and "is stale (ABI 0" in caplog.text


def test_shared_cuts_are_trimmed_only_where_the_clamp_reads_the_same_entry(monkeypatch):
    """shared_columns cuts a shared table's trailing repeats: for every partial sum, the clamped entry of the
    trimmed table is the full table's entry; a table still longer than 64 entries is left to the row kernel."""
    monkeypatch.setattr(fused_columns, "SIMD", True)
    rows = 120
    cdf = np.ones((rows, 18))
    cdf[:, 0], cdf[:, -1] = -1.0, 2.0
    for r in range(rows):  # P(code < k) for k = 1..16: a step that saturates at row 50
        cdf[r, 1:17] = np.clip((np.arange(1, 17) - min(r, 50) * 0.3) / 3.0, 0.0, 1.0)
    median = (cdf[:, 1:17] < 0.5).sum(1)
    cuts = fused_noise.table_cuts(cdf, median)
    kept, lanes = fused_columns.shared_columns(cuts)
    n = kept.shape[2]
    assert 50 <= n <= 52 and lanes.shape == (1, 1, 8, 64)
    full = cuts.reshape(-1, 2)
    for r in range(rows):
        assert (kept[0, 0, min(r, n - 1)] == full[r]).all()
    assert not (full[n - 2] == full[-1]).all()  # (nothing more could be cut)
    cdf[:, 1:17] = np.clip((np.arange(1, 17)[None, :] - np.arange(rows)[:, None] * 0.1) / 3.0, 0.0, 1.0)
    assert fused_columns.shared_columns(fused_noise.table_cuts(cdf, (cdf[:, 1:17] < 0.5).sum(1))) is None
