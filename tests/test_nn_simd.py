"""nn/_simd.c (the fused engine's AVX-512 readout) against its scalar twins and numba's readout, and how
nn/_simd.py decides whether to load it."""

from __future__ import annotations

import ctypes
import logging
import shutil
import subprocess

import numpy as np
import pytest
from scipy import stats

from nn import _simd, fused_columns, fused_noise

pytestmark = pytest.mark.skipif(not fused_columns.AVAILABLE, reason="numba not installed")

needs_lib = pytest.mark.skipif(not _simd.ENABLED, reason="nn/libcimsimd.so not built or no AVX-512 here")


_V, _I = ctypes.c_void_p, ctypes.c_int64
_ARGS = {"cim_column_codes": ([_V, _V, _I, _V, _I, _I, _I, _I, _I, _V, _V], _I),
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
    """Thresholds, column tables, by-column cuts and (s_lo, n_s) of one tile of 12 columns with offsets."""
    rng = np.random.default_rng(seed)
    thr = np.empty((1, 12, n_codes + 2))
    thr[..., 0], thr[..., -1] = -np.inf, np.inf
    thr[..., 1:-1] = np.sort(np.arange(n_codes) + 0.5 + rng.normal(0, 0.6, (1, 12, n_codes)), axis=-1)
    s_lo, n_s = fused_noise.gaussian_range(thr, 0.4, -40, 200)
    cuts = fused_noise.gaussian_cuts(thr, s_lo, n_s, 0.4, by_column=True)
    return thr, _simd.column_tables(cuts, fused_noise.wide_gaussian(thr, s_lo, n_s, 0.4)), cuts, s_lo, n_s


def _table(rows: int, step: float):
    """(cdf, median, cuts [1, 1, rows, 2], its column table) of a 32-code noise table whose partial sums 0..rows-1
    move by ``step`` codes each (Gaussian, sigma 0.45 codes), through nn.fused_columns.plan."""
    edges = np.arange(31) + 0.5
    cdf = np.ones((rows, 34))
    cdf[:, 0], cdf[:, -1] = -1.0, 2.0
    for r in range(rows):
        cdf[r, 1:33] = np.append(stats.norm.cdf((edges - r * step) / 0.45), 1.0)
    median = (cdf[:, 1:33] <= 0.5).sum(1)
    wide = fused_noise.wide_table(cdf, median)
    _, tables, cuts = fused_columns.plan(fused_noise.table_cuts(cdf, median), False, wide)
    return cdf, median, cuts, tables


def _header(table) -> tuple[int, int]:
    """(lane rows, first row the lanes do not hold) of one column table."""
    return int(table[-_simd.HEADER]), int(table[-_simd.HEADER + 1])


def _readings(rng, table, cuts, c, s_lo, n, lane, span):
    """Partial sums ``span`` (some beyond the table's rows) and random words: a quarter of them set so that the
    reading's 15 bits equal one of its cuts (ties: the slow path), a quarter just outside the window of its
    16-byte entry (which the wide rows decide, or not)."""
    rows, _ = _header(table)
    s = rng.integers(*span, n).astype(np.int64)
    words = rng.integers(0, 2**63, n, dtype=np.uint64) * np.uint64(2) + rng.integers(0, 2, n, dtype=np.uint64)
    sh = np.uint64(16 * lane + 1)
    pick = rng.random(n)
    for i in range(n):
        r = min(max(s[i] - s_lo, 0), cuts.shape[2] - 1)
        if pick[i] < 0.25:
            wide = rng.random() < 0.5
            j = rng.integers(0, 13 if wide else 7)
            u = int(table[8 * rows + 16 * r + j] if wide else table[rows * j + min(r, rows - 1)])
        elif pick[i] < 0.5:
            entry = cuts[0, c, r].view(np.uint16)
            u = int(entry[0]) - 1 if pick[i] < 0.375 else int(entry[6]) + 1
            if not 0 <= u < 2**15:
                continue
        else:
            continue
        words[i] = (words[i] & ~(np.uint64(0x7FFF) << sh)) | (np.uint64(u) << sh)
    return s, words


@needs_lib
@pytest.mark.parametrize("source,n", [("chip", 1), ("chip", 7), ("chip", 31), ("chip", 32), ("chip", 100),
                                      ("chip", 128), ("chip", 257), ("chip_low", 100), ("chip_low", 256),
                                      ("table100", 128), ("table129", 257)])
def test_column_codes_are_exact_inverse_cdf_draws_where_decided(source, n):
    """cim_column_codes (and its scalar twin) decide a reading only where its 15 random bits settle the exact
    inverse-CDF draw: every reading it decides has the code numba's readout gives it (nn.fused_columns' 16-byte
    entries, or where those defer, the exact walk of the slow path); every reading it defers (a tie with a cut,
    or beyond the wide window) numba's readout defers too; its any-slow answer matches its flags. At every
    length (masked tails) and random-word lane; for a chip's 64-row tables (readings over all rows, and only
    over rows 0-31, which the C code reads from registers alone) and for noise tables of 100 and 129 rows (128
    lane rows: the upper 64 from memory, the 129th through the wide rows); ties and readings beyond the entries'
    window are exercised."""
    fns = _both("cim_column_codes", _simd._CODES)
    rng = np.random.default_rng(100 + n)
    if source.startswith("chip"):
        thr, tables, cuts, s_lo, n_s = _column(n)
        cdf, span = np.zeros((1, 1)), (s_lo - 6, s_lo + (32 if source == "chip_low" else 70))
    else:
        rows = int(source[5:])
        cdf, _, cuts, tables = _table(rows, 0.2)
        thr, s_lo, n_s, span = np.zeros((1, 1, 1)), 0, rows, (0, rows)
        assert _header(tables[0, 0]) == ((128, rows) if rows <= 128 else (128, 128))
    sigma = 0.4 if source.startswith("chip") else 0.0
    n_slow, n_wider, n_beyond = 0, 0, 0
    for c in range(12):  # (a noise table: one table, read as 12 columns)
        lane, ci = c % 4, c if cuts.shape[1] > 1 else 0
        s, words = _readings(rng, tables[0, ci], cuts, ci, s_lo, n, lane, span)
        want_code, want_slow = np.empty(n, np.int64), np.empty(n, np.bool_)
        fused_columns._column_codes(s, words, lane, cuts, 0, ci, s_lo, np.empty((2, n), np.uint64), want_code,
                                    want_slow)
        u15 = ((words >> np.uint64(16 * lane + 1)) & np.uint64(0x7FFF)).astype(np.uint16)
        for i in np.flatnonzero(want_slow):  # the exact code (the slow path's walk; its extra bits never matter
            base = int(cuts[0, ci, min(max(s[i] - s_lo, 0), n_s - 1), 1] >> np.uint64(48))  # where u15 decides)
            want_code[i] = fused_noise._slow_code(u15[i], s[i], 0, ci, s[i] - s_lo, base, np.uint64(9), np.uint64(i),
                                                  thr, sigma, cdf)
        rows, limit = _header(tables[0, ci])
        s16 = s.astype(np.int16)  # (the kernel's partial sums, as the C code reads them)
        for fn in fns:
            code, slow = np.full(n, 65535, np.uint16), np.full(n, 7, np.uint8)
            got_any = fn(_ptr(s16), _ptr(words), lane, _ptr(tables[0, ci]), s_lo, rows, n_s, limit, n, _ptr(code),
                         _ptr(slow))
            slow = slow.astype(bool)
            assert set(np.unique(slow)) <= {False, True} and bool(got_any) == slow.any()
            assert not (slow & ~want_slow).any()
            assert np.array_equal(code[~slow], want_code[~slow])
        n_slow += int(slow.sum())
        n_wider += int((want_slow & ~slow).sum())
        n_beyond += int(((s - s_lo >= limit) & ~slow).sum())
    assert n == 1 or n_slow > 0  # (ties deferred)
    assert n < 32 or not source.startswith("chip") or n_wider > 0  # (readings beyond the entries' window decided)
    assert source != "table129" or n_beyond > 0  # (row 128, beyond the lanes, decided through the wide rows)


@needs_lib
@pytest.mark.parametrize("n_lev", [5, 16, 32, 40])
def test_column_add_equals_the_scalar_twin_bit_for_bit(n_lev):
    """cim_column_add adds (bw[p] * lev[code]) * w in plane order, each step rounded, like the scalar loop: the
    accumulators agree bit for bit, for levels in registers (<= 32) and gathered (more), any block length."""
    fns = _both("cim_column_add", _simd._ADD)
    rng = np.random.default_rng(n_lev)
    lev = rng.normal(0, 3, n_lev) * 1.37
    for nb, planes in ((1, 1), (7, 8), (16, 8), (17, 3)):
        code = rng.integers(0, n_lev, nb * planes).astype(np.uint16)
        bw = rng.normal(0, 10, planes)
        acc0 = rng.normal(0, 1e3, nb)
        accs = []
        for fn in fns:
            acc = acc0.copy()
            fn(_ptr(code), nb, planes, _ptr(bw), _ptr(lev), n_lev, 0.3, _ptr(acc))
            accs.append(acc)
        assert np.array_equal(accs[0], accs[1]) and not np.array_equal(accs[0], acc0)


def test_column_tables_hold_the_entries_transposed_then_the_wide_rows():
    """A chip's column table holds lane j of the entry of partial-sum index r at j * 64 + r (cuts 0-6, then base;
    rows past n_s repeat the last), then the wide rows: base = (noise-free code - 5) clamped and the cuts
    floor(2^15 P(code < base + j)), j = 0..12, then its header (64 rows, every row held); more than 129 entry
    rows get none."""
    thr, tables, cuts, s_lo, n_s = _column(3)
    assert tables.shape == (1, 12, 8 * 64 + 16 * n_s + _simd.HEADER) and tables.dtype == np.uint16
    assert _header(tables[0, 4]) == (64, n_s)
    for c, r in ((0, 0), (5, n_s - 1), (11, n_s // 2), (7, 63)):
        rc = min(r, n_s - 1)
        w0, w1 = (int(v) for v in cuts[0, c, rc])
        want = [(w0 >> (16 * j)) & 0xFFFF for j in range(4)] + [(w1 >> (16 * j)) & 0xFFFF for j in range(4)]
        assert [int(tables[0, c, 64 * j + r]) for j in range(8)] == want
        row = tables[0, c, 512 + 16 * rc : 512 + 16 * (rc + 1)]
        sv = s_lo + rc
        t = thr[0, c, 1:-1]
        base = min(max(int((t <= sv).sum()) - 5, 0), len(t) + 1 - 12)
        assert row[13] == base
        for j in range(13):
            p = stats.norm.cdf((thr[0, c, base + j] - sv) / 0.4) if base + j <= len(t) + 1 else 1.0
            assert abs(int(row[j]) - min(np.floor(p * 2**15), 2**15 - 1)) <= 1
    assert _simd.column_tables(np.zeros((1, 1, 130, 2), np.uint64), np.zeros((1, 1, 130, 16), np.uint16)) is None
    assert _simd.column_tables(np.zeros((1, 1, 2, 2), np.uint64), np.zeros((1, 1, 70_000, 16), np.uint16)) is None


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


def test_shared_tables_are_trimmed_only_where_the_clamp_reads_the_same_entry():
    """A noise table's trailing repeated entries are cut off its lanes for the column kernel: for every partial
    sum, the clamped lane row is the full table's entry and the wide row is the table's own; a table whose
    entries still span more than 129 rows is left to the row kernel."""
    rows = 120
    cdf = np.ones((rows, 18))
    cdf[:, 0], cdf[:, -1] = -1.0, 2.0
    for r in range(rows):  # P(code < k) for k = 1..16: a step that saturates at row 50
        cdf[r, 1:17] = np.clip((np.arange(1, 17) - min(r, 50) * 0.3) / 3.0, 0.0, 1.0)
    median = (cdf[:, 1:17] < 0.5).sum(1)
    cuts, wide = fused_noise.table_cuts(cdf, median), fused_noise.wide_table(cdf, median)
    columns, tables, kept = fused_columns.plan(cuts, False, wide)
    assert columns and kept.shape == (1, 1, rows, 2) and _header(tables[0, 0]) == (64, rows)
    entries = cuts.reshape(-1, 2)
    n = 1 + max(r for r in range(rows) if not (entries[r] == entries[-1]).all())
    assert 50 <= n <= 52
    for r in range(rows):
        assert (tables[0, 0, 512 + 16 * r : 512 + 16 * (r + 1)] == wide[r]).all()
        assert (tables[0, 0, [64 * j + min(r, 63) for j in range(8)]] == entries[r].view(np.uint16)).all()
    assert _header(_table(129, 0.2)[3][0, 0]) == (128, 128) and _header(_table(100, 0.2)[3][0, 0]) == (128, 100)
    cdf, median = _table(140, 0.2)[:2]
    columns, tables, _ = fused_columns.plan(fused_noise.table_cuts(cdf, median), False,
                                            fused_noise.wide_table(cdf, median))
    assert not columns and tables.shape[0] == 0


def test_column_tables_are_built_within_a_budget(monkeypatch):
    """A chip's per-column tables are built only where the AVX-512 code runs, its range spans at most 129
    partial sums and the layer's tables fit the budget (a VGG-8 chip's 64-tile x 2048-column classifier would
    need ~290 MB; 128 lane rows double the lanes); shared tables whenever the code runs."""
    monkeypatch.setattr(fused_columns, "SIMD", True)
    assert fused_columns.takes(True, 9, 256, 37) and fused_columns.takes(False, 1, 1, 129)
    assert fused_columns.takes(True, 9, 256, 120) and not fused_columns.takes(True, 1, 1, 130)
    assert not fused_columns.takes(True, 64, 2048, 37) and 64 * 2048 * _simd.table_bytes(37, 37) > 2.8e8
    assert fused_columns.takes(True, 36, 1000, 64) and not fused_columns.takes(True, 36, 1000, 65)  # (2x the lanes)
    monkeypatch.setattr(fused_columns, "SIMD", False)
    assert not fused_columns.takes(False, 1, 1, 10) and not fused_columns.takes(True, 1, 1, 10)
