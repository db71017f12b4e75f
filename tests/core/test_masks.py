"""RLE helpers: the vectorized counts decoder equals a plain loop over the format of pycocotools'
rleToString, on arbitrary strings and on real RLEs."""

import numpy as np
from hypothesis import given, settings
from hypothesis import strategies as st
from pycocotools import mask as mu

from getok_core.data.masks import rle_string_counts


def ref(s):
    counts=[]; p,n=0,len(s)
    while p<n:
        x=k=0; more=True
        while more:
            if p>=n or k>=7: return None
            c=ord(s[p])-48
            if not 0<=c<64: return None
            x|=(c&0x1F)<<(5*k); more=bool(c&0x20); p+=1; k+=1
            if not more and c&0x10: x|=-1<<(5*k)
        if len(counts)>2: x+=counts[-2]
        if not 0<=x<2**32: return None
        counts.append(x)
    return counts


@settings(max_examples=3000)
@given(st.text(alphabet=st.characters(min_codepoint=40, max_codepoint=120), max_size=40))
def test_counts_decoder_matches_the_reference_on_any_string(s):
    a, b = ref(s), rle_string_counts(s)
    assert (a is None) == (b is None), (s, a, b)
    if a is not None:
        assert list(b) == a


def test_counts_decoder_on_real_rles():
    rng = np.random.default_rng(0)
    for _ in range(300):
        m = rng.random((rng.integers(1, 60), rng.integers(1, 60))) < rng.random()
        s = mu.encode(np.asfortranarray(m.astype(np.uint8)))["counts"].decode()
        assert list(rle_string_counts(s)) == ref(s) and int(rle_string_counts(s).sum()) == m.size
    assert rle_string_counts("é") is None and len(rle_string_counts("")) == 0


@settings(max_examples=200)
@given(st.integers(1, 9), st.integers(1, 9), st.integers(0, 2**32 - 1))
def test_uncompressed_counts_round_trip_through_pycocotools(h, w, seed):
    from pycocotools import mask as mask_utils

    from getok_core.data.masks import uncompressed_counts

    m = np.random.default_rng(seed).random((h, w)) < 0.5
    counts = uncompressed_counts(m)
    assert sum(counts) == h * w and counts[0] == (0 if m.flat[0] else counts[0])
    rle = mask_utils.frPyObjects({"size": [h, w], "counts": counts}, h, w)
    assert np.array_equal(mask_utils.decode(rle).astype(bool), m)
