"""Golden tests of the positional / harmonic embeddings (``embeddings.pt``)."""

from __future__ import annotations

import re

from _vggsfm_golden import assert_close, golden

from vggsfm_ns.networks.embeddings import flow_embedding_2d, harmonic_embedding, sincos_pos_embed_2d


def test_golden_sincos_pos_embed():
    g = golden("embeddings.pt")
    keys = [k for k in g if k.startswith("sincos_pos_embed_")]
    assert keys, "no sincos keys in embeddings.pt"
    for k in keys:
        ref = g[k]
        _, D, H, W = ref.shape
        assert_close(k, sincos_pos_embed_2d(D, (H, W)), ref)


def test_golden_flow_embedding():
    g = golden("embeddings.pt")
    keys = [k for k in g if re.fullmatch(r"embed2d_C\d+", k)]
    assert keys
    for k in keys:
        C = int(k.split("C")[-1])
        out = flow_embedding_2d(g["embed2d_input"], C)
        assert_close(k, out, g[k])


def test_golden_harmonic_embedding():
    g = golden("embeddings.pt")
    x, ref = g["harmonic_input"], g["harmonic_output"]
    n = ref.shape[-1] // (2 * x.shape[-1])
    assert_close("harmonic_output", harmonic_embedding(x, n), ref)
