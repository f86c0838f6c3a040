"""Top-down crop geometry (HRNet convention): person box (center, scale) <-> network input."""

from __future__ import annotations

import cv2
import numpy as np

PIXEL_STD = 200.0  # MPII/HRNet: scale * 200 = box size in pixels


def _rotate(point: np.ndarray, radians: float) -> np.ndarray:
    sn, cs = np.sin(radians), np.cos(radians)
    return np.array([point[0] * cs - point[1] * sn, point[0] * sn + point[1] * cs])


def _third_point(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    direction = a - b
    return b + np.array([-direction[1], direction[0]])


def affine_transform(
    center: np.ndarray,
    scale: np.ndarray,
    rotation: float,
    output_size: tuple[int, int],
    inverse: bool = False,
) -> np.ndarray:
    """2x3 matrix mapping the box (center, scale*200 px, rotated by degrees) onto ``output_size``
    (width, height); ``inverse`` maps back. Same three-point construction as HRNet."""
    src_w = scale[0] * PIXEL_STD
    dst_w, dst_h = output_size
    src_dir = _rotate(np.array([0.0, src_w * -0.5]), np.pi * rotation / 180.0)
    dst_dir = np.array([0.0, dst_w * -0.5])
    src = np.zeros((3, 2), np.float32)
    dst = np.zeros((3, 2), np.float32)
    src[0], src[1] = center, center + src_dir
    dst[0] = [dst_w * 0.5, dst_h * 0.5]
    dst[1] = dst[0] + dst_dir
    src[2], dst[2] = _third_point(src[0], src[1]), _third_point(dst[0], dst[1])
    if inverse:
        return cv2.getAffineTransform(dst, src)
    return cv2.getAffineTransform(src, dst)


def apply_affine(points: np.ndarray, matrix: np.ndarray) -> np.ndarray:
    """Transform (N, 2) points by a 2x3 matrix."""
    return points @ matrix[:, :2].T + matrix[:, 2]


def warp(image: np.ndarray, matrix: np.ndarray, output_size: tuple[int, int]) -> np.ndarray:
    return cv2.warpAffine(image, matrix, output_size, flags=cv2.INTER_LINEAR)


def flip_joints(joints: np.ndarray, vis: np.ndarray, width: int, pairs: list[tuple[int, int]]):
    """Mirror x in an image of ``width`` and swap left/right joints (HRNet fliplr_joints)."""
    joints = joints.copy()
    vis = vis.copy()
    joints[:, 0] = width - joints[:, 0] - 1
    for a, b in pairs:
        joints[[a, b]] = joints[[b, a]]
        vis[[a, b]] = vis[[b, a]]
    return joints * vis[:, None], vis
