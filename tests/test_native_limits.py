"""Sizes the native helpers cannot honour are ValueErrors naming them, not process aborts
(allocation failure), `InternalError`s (capacity overflow) or endless loops."""

from __future__ import annotations

import subprocess
import sys

import numpy as np
import pytest

from unimask import _native
from unimask.collators import MLMCollator


def test_permutation_of_an_impossible_size_is_a_value_error():
    with pytest.raises(ValueError, match=f"n={2**62} "):  # 2**62 * 8 bytes overflows isize
        _native.permutation(2**62, 0, 0)
    p = _native.permutation(10, 3, 1)
    assert sorted(p.tolist()) == list(range(10)) and np.array_equal(p, _native.permutation(10, 3, 1))


_ABORT_SCRIPT = """
import resource
resource.setrlimit(resource.RLIMIT_AS, (4 << 30, 4 << 30))
from unimask import _native
try:
    _native.permutation(2**45, 0, 0)  # 256 TiB: the allocation fails
except ValueError as e:
    print("ValueError", e)
"""


@pytest.mark.skipif(sys.platform != "linux", reason="RLIMIT_AS bounds the allocation on Linux")
def test_permutation_allocation_failure_does_not_abort():
    r = subprocess.run([sys.executable, "-c", _ABORT_SCRIPT], capture_output=True, text=True, timeout=120)
    assert r.returncode == 0, (r.returncode, r.stderr[-2000:])  # was SIGABRT (-6)
    assert r.stdout.startswith(f"ValueError permutation of n={2**45} elements"), r.stdout


def test_sampled_span_lengths_is_bounded():
    c = MLMCollator(vocab_size=100, pad_id=0, unk_id=1, cls_id=2, sep_id=3, mask_id=4, span="geometric")
    for n_tokens, samples in [(2**62, 1), (2**40, 1), (1, 2**64 - 1), (2**14, 2**14 + 1)]:
        with pytest.raises(ValueError, match=f"n_tokens={n_tokens} \\* samples={samples} exceeds"):
            c._sampled_span_lengths(n_tokens, samples)
    drawn, kept = c._sampled_span_lengths(0, 5)
    assert drawn.size == 0 and kept.size == 0
