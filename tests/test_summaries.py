"""TensorBoard helpers: heat maps and grids by hand-computed cases."""

import numpy as np

from tf_ntk import summaries


def test_heat_map_scales_min_to_black_and_max_to_white():
    img = summaries.heat_map(np.array([[0.0, 1.0], [2.0, 4.0]]), min_pixels=4)
    assert img.shape == (1, 4, 4, 3) and img.dtype == np.uint8
    np.testing.assert_array_equal(img[0, :, :, 0], np.kron(np.array([[0, 64], [128, 255]]), np.ones((2, 2))))
    np.testing.assert_array_equal(summaries.heat_map(np.ones((3, 3)), min_pixels=3), 0)


def test_image_grid_places_images_row_by_row():
    images = np.stack([np.full((2, 2, 1), v, np.float32) for v in (0.1, 0.2, 0.3)])
    grid = summaries.image_grid(images, columns=2)
    assert grid.shape == (1, 4, 4, 1)
    np.testing.assert_allclose(grid[0, :2, :2, 0], 0.1)
    np.testing.assert_allclose(grid[0, :2, 2:, 0], 0.2)
    np.testing.assert_allclose(grid[0, 2:, :2, 0], 0.3)
    np.testing.assert_allclose(grid[0, 2:, 2:, 0], 1.0)  # padding is white
