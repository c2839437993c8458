import itertools

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from geoseg.errors import ConfigError
from geoseg.tiling import make_grid, round_up


@settings(max_examples=200, deadline=None)
@given(
    h=st.integers(1, 700),
    w=st.integers(1, 700),
    stride=st.sampled_from([1, 8, 32]),
    tile_mult=st.integers(1, 8),
    overlap_frac=st.floats(0, 0.49),
)
def test_tiles_cover_every_pixel(h, w, stride, tile_mult, overlap_frac):
    tile = stride * tile_mult * (4 if stride == 1 else 1)
    overlap = int(tile * overlap_frac)
    if 2 * overlap >= tile:
        overlap = 0
    g = make_grid(h, w, tile=tile, overlap=overlap, stride=stride)
    seen = np.zeros((h, w), dtype=np.int32)
    for t in g:
        clip = t.window.clip(h, w)
        assert clip is not None
        seen[clip.row_off : clip.row_end, clip.col_off : clip.col_end] += 1
        assert t.window.height % stride == 0 and t.window.width % stride == 0
    assert seen.min() >= 1, "a pixel is not covered"
    # Neighbours overlap by at least `overlap` pixels, and starts increase.
    for starts, size, length in ((g.row_starts, g.tile_h, h), (g.col_starts, g.tile_w, w)):
        assert starts[0] == 0
        assert starts[-1] + size >= length
        for a, b in itertools.pairwise(starts):
            assert b > a
            assert a + size - b >= overlap


def test_smaller_than_one_tile_rounds_to_stride():
    g = make_grid(10, 70, tile=512, overlap=64, stride=32)
    assert (g.tile_h, g.tile_w) == (32, 96)
    assert len(g) == 1


def test_last_row_and_column_are_flush():
    g = make_grid(1000, 1001, tile=256, overlap=32)
    assert g.row_starts[-1] + 256 == 1000
    assert g.col_starts[-1] + 256 == 1001


@pytest.mark.parametrize(
    ("tile", "overlap", "stride"), [(0, 0, 1), (100, 0, 32), (64, 32, 1), (64, -1, 1)]
)
def test_bad_parameters_raise_config_error(tile, overlap, stride):
    with pytest.raises(ConfigError):
        make_grid(100, 100, tile=tile, overlap=overlap, stride=stride)


def test_round_up():
    assert round_up(1, 32) == 32 and round_up(64, 32) == 64


@settings(max_examples=150, deadline=None)
@given(
    h=st.integers(1, 600),
    w=st.integers(1, 600),
    data=st.data(),
)
def test_region_grid_keeps_exactly_the_tiles_touching_the_core(h, w, data):
    from geoseg.tiling import region_grid
    from geoseg.types import PixelWindow

    g = make_grid(h, w, tile=64, overlap=16)
    r0 = data.draw(st.integers(0, h - 1))
    c0 = data.draw(st.integers(0, w - 1))
    core = PixelWindow(r0, c0, data.draw(st.integers(1, h - r0)), data.draw(st.integers(1, w - c0)))
    sub = region_grid(g, core)
    oy, ox = sub.origin
    touching = {
        (t.window.row_off, t.window.col_off, t.edges)
        for t in g
        if t.window.row_off < core.row_end
        and t.window.row_end > core.row_off
        and t.window.col_off < core.col_end
        and t.window.col_end > core.col_off
    }
    kept = {(t.window.row_off + oy, t.window.col_off + ox, t.edges) for t in sub}
    assert kept == touching
    assert oy <= core.row_off and oy + sub.height >= core.row_end
    assert ox <= core.col_off and ox + sub.width >= core.col_end
