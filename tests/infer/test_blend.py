import numpy as np
from hypothesis import given, settings
from hypothesis import strategies as st

from geoseg.infer.blend import StreamingBlender, ramp_1d, tile_weights
from geoseg.tiling import make_grid

shapes = st.tuples(st.integers(1, 300), st.integers(1, 300))


@settings(max_examples=150, deadline=None)
@given(shape=shapes, tile=st.sampled_from([16, 32, 64, 100]), frac=st.floats(0, 0.45))
def test_normalised_weights_sum_to_one_wherever_covered(shape, tile, frac):
    h, w = shape
    overlap = int(tile * frac)
    g = make_grid(h, w, tile=tile, overlap=overlap)
    total = np.zeros((h, w))
    tiles = list(g)
    for t in tiles:
        c = t.window.clip(h, w)
        ww = tile_weights(g, t)[: c.height, : c.width]
        total[c.row_off : c.row_end, c.col_off : c.col_end] += ww
    assert total.min() > 0, "some pixel gets zero total weight"
    norm_sum = np.zeros((h, w))
    for t in tiles:
        c = t.window.clip(h, w)
        ww = tile_weights(g, t)[: c.height, : c.width]
        norm_sum[c.row_off : c.row_end, c.col_off : c.col_end] += (
            ww / total[c.row_off : c.row_end, c.col_off : c.col_end]
        )
    np.testing.assert_allclose(norm_sum, 1.0, atol=1e-6)


@settings(max_examples=60, deadline=None)
@given(
    shape=shapes,
    tile=st.sampled_from([16, 48, 64]),
    frac=st.floats(0, 0.45),
    seed=st.integers(0, 9),
)
def test_blender_reproduces_a_consistent_field_exactly(shape, tile, frac, seed):
    """If every tile sees the same underlying field, blending returns that field."""
    h, w = shape
    g = make_grid(h, w, tile=tile, overlap=int(tile * frac))
    rng = np.random.default_rng(seed)
    field = rng.random((3, h, w)).astype(np.float32)
    field /= field.sum(0)
    valid = rng.random((h, w)) > 0.1
    out = np.full_like(field, -1)
    hits = np.zeros((h, w), np.int32)
    blender = StreamingBlender(g, 3)
    for t in g:
        c = t.window.clip(h, w)
        probs = np.zeros((3, g.tile_h, g.tile_w), np.float32)
        v = np.zeros((g.tile_h, g.tile_w), bool)
        probs[:, : c.height, : c.width] = field[:, c.row_off : c.row_end, c.col_off : c.col_end]
        v[: c.height, : c.width] = valid[c.row_off : c.row_end, c.col_off : c.col_end]
        for b in blender.add(t, probs if v.any() else None, v):
            bh, bw = b.covered.shape
            out[:, b.row_off : b.row_off + bh, b.col_off : b.col_off + bw] = b.probs
            hits[b.row_off : b.row_off + bh, b.col_off : b.col_off + bw] += 1
            assert not b.covered[
                ~valid[b.row_off : b.row_off + bh, b.col_off : b.col_off + bw]
            ].any()
    assert (hits == 1).all(), "every pixel must be released exactly once"
    np.testing.assert_allclose(out[:, valid], field[:, valid], atol=1e-6)
    assert (out[:, ~valid] == 0).all()


def test_ramp_is_zero_on_the_margin_and_one_inside():
    r = ramp_1d(64, 16, 4, True, True)
    assert (r[:4] == 0).all() and (r[-4:] == 0).all()
    assert (r[16:-16] == 1).all()
    assert (np.diff(r[:16]) >= 0).all()


def test_raster_edges_do_not_fade():
    r = ramp_1d(64, 16, 4, False, False)
    assert (r == 1).all()


def test_blender_memory_does_not_scale_with_height():
    g_short = make_grid(256, 1000, tile=64, overlap=16)
    g_tall = make_grid(4096, 1000, tile=64, overlap=16)
    sizes = []
    for g in (g_short, g_tall):
        b = StreamingBlender(g, 4)
        peak = 0
        for t in g:
            list(b.add(t, np.full((4, 64, 64), 0.25, np.float32), None))
            peak = max(peak, b._buf.nbytes + b._carry.nbytes + b._next_carry.nbytes)
        sizes.append(peak)
    assert sizes[0] == sizes[1]
