"""Eval and predict pictures: panels scaled to one height, each under its title."""

from __future__ import annotations

import numpy as np
import pytest

from dnas.vis.images import PANEL_HEIGHT, TITLE_HEIGHT, panels, resized, titled


def test_resized_keeps_the_aspect_and_returns_the_coordinate_factor():
    image = np.zeros((128, 96, 3), np.uint8)
    image[64, 48] = 255
    big, factor = resized(image)
    assert factor == PANEL_HEIGHT / 128 == 3.0
    assert big.shape == (384, 288, 3)
    # nearest-neighbour: the bright pixel becomes a 3x3 block at 3x its coordinates
    assert big[192:195, 144:147].min() == 255 and big.sum() == 9 * 3 * 255
    small, factor = resized(np.zeros((768, 1024, 3), np.uint8))
    assert factor == 0.5 and small.shape == (384, 512, 3)


def test_titled_writes_dark_text_in_a_white_band_above_the_image():
    image = np.full((50, 200, 3), 255, np.uint8)
    out = titled(image, "ground truth")
    assert out.shape == (50 + TITLE_HEIGHT, 200, 3)
    band = out[:TITLE_HEIGHT]
    assert band.min() < 80  # text drawn
    assert (out[TITLE_HEIGHT:] == image).all()
    ink = np.argwhere(band.min(axis=2) < 128)[:, 1]
    assert abs((ink.min() + ink.max()) / 2 - 100) <= 3  # centred
    narrow = titled(np.full((20, 30, 3), 255, np.uint8), "a very long title")
    ink = np.argwhere(narrow[:TITLE_HEIGHT].min(axis=2) < 128)[:, 1]
    assert ink.min() >= 0 and ink.max() < 30  # shrunk to fit


def test_panels_scale_every_image_to_one_height_with_gaps():
    a = np.zeros((64, 64, 3), np.uint8)
    b = np.zeros((128, 64, 3), np.uint8)
    out = panels([a, b], ["ground truth", "prediction"], gap=8)
    assert out.shape == (PANEL_HEIGHT + TITLE_HEIGHT, 384 + 8 + 192, 3)
    assert (out[TITLE_HEIGHT:, 384:392] == 255).all()  # the gap
    assert (out[TITLE_HEIGHT:, :384] == 0).all() and (out[TITLE_HEIGHT:, 392:] == 0).all()
    with pytest.raises(ValueError, match="2 panels but 1 titles"):
        panels([a, b], ["only one"])
