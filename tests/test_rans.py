"""The edge's rANS coder, both implementations (compiled ``ranscoder.c`` and Python), against CompressAI's.

Property tests on random symbols, table indexes and escapes far outside the tables: the bytes CompressAI writes,
CompressAI's bytes decoded back, and forged or truncated payloads (an error or symbols, the same from both
implementations, never a crash). The compiled coder is required here (``make venv`` builds it): a checkout where
it does not build fails these tests instead of skipping them.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings, strategies as st

from shared.bitstream import BitstreamError
from shared.codec import rans

ROOT = Path(__file__).resolve().parents[1]
CODERS = ["c", "python"]


@pytest.fixture(scope="module")
def gc_tables():
    from compressai.entropy_models import GaussianConditional

    from shared.codec.rate_models import scale_table

    gc = GaussianConditional(None)
    gc.update_scale_table(scale_table(), force=True)
    return gc._quantized_cdf.numpy(), gc._cdf_length.numpy(), gc._offset.numpy()


@pytest.fixture(scope="module")
def tables(gc_tables):
    return rans.RansTables(*gc_tables)


def coder(name):
    assert name in rans.IMPLEMENTATIONS, f"the compiled rANS coder did not load: {rans.COMPILED_ERROR}"
    return rans.IMPLEMENTATIONS[name]


def _case(data, n_tables, min_size=4, max_size=400, top=2**26):
    # CompressAI's encoder sizes its output buffer by the symbol count and writes 2 words on flush, so it
    # corrupts memory below 4 symbols; ours write those correctly (the state flush only). It counts an escape's
    # chunks with an int32 shift by 4 * n, undefined from n = 8, and on x86 loops forever there (escaped values
    # from about 2**27); ours code the whole int32 range.
    n = data.draw(st.integers(min_size, max_size))
    idx = data.draw(st.lists(st.integers(0, n_tables - 1), min_size=n, max_size=n))
    sym = data.draw(st.lists(st.one_of(st.integers(-8, 8), st.integers(-(2**20), 2**20), st.integers(-top, top - 1)),
                             min_size=n, max_size=n))
    return sym, idx


def _compressai_encode(sym, idx, gc_tables):
    from compressai.ans import RansEncoder

    cdf, lengths, offsets = gc_tables
    return RansEncoder().encode_with_indexes(sym, idx, cdf.tolist(), lengths.tolist(), offsets.tolist())


def _outcome(fn):
    """What a decode gives: ("ok", symbols) or (exception type, message); anything else propagates."""
    try:
        return "ok", fn().tolist()
    except (BitstreamError, ValueError) as e:
        return type(e).__name__, str(e)


# ---------------------------------------------------------------------------------------------- encoder
@pytest.mark.parametrize("name", CODERS)
@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(data=st.data())
def test_encoder_writes_compressais_bytes(name, gc_tables, tables, data):
    """Any symbols (escapes far outside the tables, up to the int32 range, included) and table indexes: the same
    bytes as CompressAI."""
    sym, idx = _case(data, len(gc_tables[0]))
    want = _compressai_encode(sym, idx, gc_tables)
    assert coder(name).encode_with_indexes(np.array(sym, dtype=np.int64), np.array(idx), tables) == want


@pytest.mark.parametrize("name", CODERS)
def test_encoder_checks_its_input(name, gc_tables, tables):
    enc = coder(name).encode_with_indexes
    with pytest.raises(ValueError, match="indexes"):
        enc(np.zeros(3), np.zeros(2), tables)
    with pytest.raises(ValueError, match="out of range"):
        enc(np.zeros(2), np.array([0, len(gc_tables[0])]), tables)
    with pytest.raises(ValueError, match="out of range"):
        enc(np.zeros(2), np.array([0, -1]), tables)
    with pytest.raises(ValueError, match="int32"):
        enc(np.array([0, 2**31]), np.zeros(2, dtype=np.int64), tables)
    assert len(enc(np.zeros(0), np.zeros(0), tables)) == 8  # no symbols: the state alone


def test_tables_are_checked_once():
    good = np.array([[0, 100, 65536, 0], [0, 1, 2, 65536]])
    rans.RansTables(good, [3, 4], [0, -1])
    for cdf, lengths in ((good, [3]), (good, [1, 4]), (good, [3, 5]), (good * [[1, 1, 0, 1], [1, 1, 1, 1]], [3, 4]),
                         (np.array([[0, 100, 100, 65536]]), [4]), (np.array([[1, 100, 65536]]), [3]),
                         (np.array([[0, 100, 65535]]), [3])):
        with pytest.raises(ValueError, match="inconsistent"):
            rans.RansTables(cdf, lengths, np.zeros(len(lengths)))


def test_many_escapes_outgrow_the_first_output_buffer(tables):
    """The compiled encoder's first buffer holds about a word per symbol; all-escape input needs more, so it
    reports the size and is called again: same bytes as the Python coder."""
    sym = np.full(500, 2**31 - 1, dtype=np.int64)
    idx = np.zeros(500, dtype=np.int64)
    b = coder("c").encode_with_indexes(sym, idx, tables)
    assert len(b) > 8 + 4 * 500 + 256 and b == coder("python").encode_with_indexes(sym, idx, tables)


# ---------------------------------------------------------------------------------------------- decoder
@pytest.mark.parametrize("name", CODERS)
@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(data=st.data())
def test_decoder_reads_compressais_bytes(name, gc_tables, tables, data):
    from compressai.ans import RansDecoder

    sym, idx = _case(data, len(gc_tables[0]))
    payload = _compressai_encode(sym, idx, gc_tables)
    got = coder(name).decode_with_indexes(payload, np.array(idx).reshape(1, -1), tables)
    assert got.shape == (1, len(idx)) and got.dtype == np.int32 and got.ravel().tolist() == sym
    cdf, lengths, offsets = gc_tables
    assert RansDecoder().decode_with_indexes(payload, idx, cdf.tolist(), lengths.tolist(), offsets.tolist()) == sym


@settings(max_examples=100, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(data=st.data(), few=st.booleans())
def test_what_compressai_cannot_code_round_trips_the_same_in_both(gc_tables, tables, data, few):
    """0 to 3 symbols, and escapes up to the int32 range (CompressAI cannot code either): both coders write the
    same bytes and read them back."""
    sym, idx = _case(data, len(gc_tables[0]), 0, 3) if few else _case(data, len(gc_tables[0]), 4, 100, 2**31)
    sym, idx = np.array(sym, dtype=np.int64), np.array(idx, dtype=np.int64)
    payloads = [coder(n).encode_with_indexes(sym, idx, tables) for n in CODERS]
    assert payloads[0] == payloads[1]
    for n in CODERS:
        assert coder(n).decode_with_indexes(payloads[0], idx, tables).tolist() == sym.tolist()


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(data=st.data())
def test_forged_and_truncated_payloads(gc_tables, tables, data):
    """A valid payload cut, extended, with bytes changed, or any bytes at all: each coder gives symbols or a
    BitstreamError (never a crash, never another error), and both give the same. A cut or extended payload is
    always refused (it does not end where its symbols do)."""
    sym, idx = _case(data, len(gc_tables[0]), 4, 60)
    idx = np.array(idx, dtype=np.int64)
    payload = bytearray(_compressai_encode(sym, idx.tolist(), gc_tables))
    how = data.draw(st.sampled_from(["cut", "extend", "flip", "any"]))
    if how == "cut":
        forged = bytes(payload[: data.draw(st.integers(0, len(payload) - 1))])
    elif how == "extend":
        forged = bytes(payload) + data.draw(st.binary(min_size=1, max_size=16))
    elif how == "flip":
        for _ in range(data.draw(st.integers(1, 4))):
            payload[data.draw(st.integers(0, len(payload) - 1))] ^= data.draw(st.integers(1, 255))
        forged = bytes(payload)
    else:
        forged = data.draw(st.binary(max_size=64)) + data.draw(st.sampled_from([b"", b"\xff" * 64, b"\x00" * 64]))
    outcomes = [_outcome(lambda: coder(n).decode_with_indexes(forged, idx, tables)) for n in CODERS]
    assert outcomes[0] == outcomes[1]
    assert outcomes[0][0] in ("ok", "BitstreamError"), outcomes[0]
    if how in ("cut", "extend"):
        assert outcomes[0][0] == "BitstreamError"


@pytest.mark.parametrize("name", CODERS)
def test_decoder_refusals_say_why(name, tables):
    dec = coder(name).decode_with_indexes
    idx = np.zeros(5, dtype=np.int64)
    good = coder(name).encode_with_indexes(np.arange(5), idx, tables)
    for payload, why in ((good[:-4], "truncated"), (good[:6], "truncated"), (good + bytes(4), "left after"),
                         (bytes(8), "truncated"), (good[:-1], "truncated")):
        with pytest.raises(BitstreamError, match=why):
            dec(payload, idx, tables)
    with pytest.raises(BitstreamError, match="initial state"):  # no symbols, a state the encoder never ends in
        dec((2**31 + 1).to_bytes(8, "little"), idx[:0], tables)
    assert dec((2**31).to_bytes(8, "little"), idx[:0], tables).size == 0
    # 17 bypass chunks of 15 would follow an escape: more than any int32 gives, refused before reading them
    esc = coder(name).encode_with_indexes(np.array([2**31 - 1]), np.zeros(1, dtype=np.int64), tables)
    forged = esc[:8] + b"\xff" * 64
    with pytest.raises(BitstreamError):
        dec(forged, np.zeros(1, dtype=np.int64), tables)
    with pytest.raises(ValueError, match="out of range"):
        dec(good, np.full(5, len(tables.cdf)), tables)


# -------------------------------------------------------------------------------------- the choice
def _choice(env):
    code = "import json; from shared.codec import rans; print(json.dumps([rans.implementation(), rans.COMPILED_ERROR]))"
    return subprocess.run([sys.executable, "-c", code], cwd=ROOT, env={**os.environ, **env}, capture_output=True,
                          text=True, timeout=60)


def test_the_compiled_coder_is_chosen_and_the_python_one_takes_over_where_it_cannot_load(tmp_path):
    assert rans.implementation() == "c" or os.environ.get(rans.CODER_ENV) == "python"
    out = _choice({rans.CODER_ENV: "python"})
    assert json.loads(out.stdout)[0] == "python"
    bad = tmp_path / "_ranscoder.so"
    bad.write_bytes(b"\x7fELF not a library")  # a library for another machine fails to load the same way
    from shared.codec.rans_compiled import LIB_ENV

    out = _choice({LIB_ENV: str(bad), rans.CODER_ENV: ""})
    name, why = json.loads(out.stdout)
    assert name == "python" and "_ranscoder.so" in why
    out = _choice({LIB_ENV: str(bad), rans.CODER_ENV: "c"})
    assert out.returncode != 0 and "cannot load" in out.stderr


def test_the_choice_applies_to_the_module_functions(tables):
    sym, idx = np.arange(-3, 9), np.arange(12) % len(tables.cdf)
    for name in CODERS:
        with rans.using(name):
            assert rans.implementation() == name
            payload = rans.encode_with_indexes(sym, idx, tables)
            assert rans.decode_with_indexes(payload, idx, tables).tolist() == sym.tolist()
    with pytest.raises(ValueError, match="no 'fortran'"):
        with rans.using("fortran"):
            pass


# ------------------------------------------------------------------------------------------------ arm64
@pytest.mark.slow
@pytest.mark.timeout(1200)  # above the script's own 900 s subprocess limit, so that one reports first
@pytest.mark.skipif(not all(__import__("shutil").which(t) for t in ("aarch64-linux-gnu-gcc", "qemu-aarch64-static")),
                    reason="needs the aarch64 cross compiler and qemu (apt-get install gcc-aarch64-linux-gnu "
                           "qemu-user-static)")
def test_the_arm64_build_writes_and_reads_compressais_bytes(tmp_path):
    """``scripts/check_arm64_coder.sh``: ranscoder.c and hyperdec.c cross-compiled for aarch64, run under qemu by C
    drivers on vectors written here from CompressAI's encoder and the numpy h_s (no Python on the target)."""
    out = subprocess.run([str(ROOT / "scripts" / "check_arm64_coder.sh")], cwd=ROOT, capture_output=True, text=True,
                         env={**os.environ, "CASES": "120", "WORK": str(tmp_path), "PYTHON": sys.executable},
                         timeout=900)
    assert out.returncode == 0, out.stdout[-3000:] + out.stderr[-3000:]
    assert out.stdout.count(": 0 failed") == 2 and "aarch64 under" in out.stdout
    assert out.stdout.count("integer h_s vectors:") == 2 and out.stdout.count(", 0 failed") == 2
