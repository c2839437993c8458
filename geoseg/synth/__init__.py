"""Procedural, georeferenced sample scenes with exact ground truth (no shipped imagery).

Tests, the demo, benchmarks and training use these scenes.  A
:class:`SceneSpec` fixes everything; the same spec always gives the same
bytes, and pixels do not depend on the rendering block size.

Classes: 0 background (grass, meadows, bare soil, roads, paved areas, water),
1 building, 2 vegetation (woody plants: tree crowns, forest, hedgerows,
shrubs), 3 cropland (crop fields at any growth stage).

Towns hold detached houses as well as attached ones: terraced rows and
compact clusters of houses that share walls, each house a building of its own.
``scene_polygons(spec, instances=True)`` gives one ground-truth polygon per
building instance, so touching buildings stay apart
(:func:`geoseg.synth.objects.building_instances` does the same in pixel
coordinates).

>>> from geoseg.synth import SceneSpec, generate_arrays
>>> image, classes = generate_arrays(SceneSpec(128, 128, seed=7))
>>> image.shape, set(classes.ravel().tolist()) <= {0, 1, 2, 3}
((3, 128, 128), True)
"""

from __future__ import annotations

from geoseg.synth.scene import (
    CLASS_COLOURS,
    CLASS_NAMES,
    SceneBlock,
    SceneSpec,
    generate_arrays,
    iter_blocks,
    render_window,
)
from geoseg.synth.write import (
    POLYGON_LAYER,
    SceneFiles,
    make_sample_scene,
    scene_polygons,
    write_scene,
)

__all__ = [
    "CLASS_COLOURS",
    "CLASS_NAMES",
    "POLYGON_LAYER",
    "SceneBlock",
    "SceneFiles",
    "SceneSpec",
    "generate_arrays",
    "iter_blocks",
    "make_sample_scene",
    "render_window",
    "scene_polygons",
    "write_scene",
]
