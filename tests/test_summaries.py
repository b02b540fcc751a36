"""TensorBoard helpers: heat maps and grids by hand-computed cases."""

from matplotlib import colormaps
import numpy as np

from tf_ntk import summaries


def _rgb(fraction):
    return (255 * np.asarray(colormaps["viridis"](fraction))[:3]).round().astype(np.uint8)


def test_heat_map_maps_the_scale_through_the_colour_map():
    img = summaries.heat_map(np.array([[0.0, 1.0], [2.0, 4.0]]), min_pixels=4)
    assert img.shape == (1, 4, 4, 3) and img.dtype == np.uint8
    for (r, c), fraction in {(0, 0): 0.0, (0, 2): 0.25, (2, 0): 0.5, (3, 3): 1.0}.items():
        np.testing.assert_array_equal(img[0, r, c], _rgb(fraction))
    np.testing.assert_array_equal(summaries.heat_map(np.ones((3, 3)), min_pixels=3)[0, 1, 1], _rgb(0.0))


def test_a_shared_scale_clips_and_keeps_epochs_comparable():
    small, large = np.full((2, 2), 1.0), np.full((2, 2), 3.0)
    scale = summaries.colour_scale([small, large])
    assert scale == (1.0, 3.0)
    np.testing.assert_array_equal(summaries.heat_map(small, scale=scale, min_pixels=2)[0, 0, 0], _rgb(0.0))
    np.testing.assert_array_equal(summaries.heat_map(large, scale=scale, min_pixels=2)[0, 0, 0], _rgb(1.0))
    np.testing.assert_array_equal(summaries.heat_map(large, scale=(0.0, 1.0), min_pixels=2)[0, 0, 0], _rgb(1.0))


def test_class_boundaries_are_white_lines_between_classes():
    k = np.arange(16, dtype=float).reshape(4, 4)
    img = summaries.heat_map(k, labels=[0, 0, 1, 2], min_pixels=4)[0]
    assert img.shape == (6, 6, 3)  # 4 pixels + 2 boundary lines (after examples 2 and 3)
    white = np.array(summaries.BOUNDARY, np.uint8)
    assert (img[2] == white).all() and (img[:, 2] == white).all()
    assert (img[4] == white).all() and (img[:, 4] == white).all()
    np.testing.assert_array_equal(img[0, 0], _rgb(0.0))  # k[0, 0] = min
    np.testing.assert_array_equal(img[5, 5], _rgb(1.0))  # k[3, 3] = max
