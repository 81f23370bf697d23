"""ChArUco boards: the OpenCV board of a config description, corner detection, and the table anchor.

A board description (``calibration.board`` in config.yaml) holds ``squares`` [columns, rows],
``square_m``, ``marker_m``, ``dictionary`` (an OpenCV name such as DICT_4X4_50), ``thickness_m`` and,
for boards printed white-on-black, ``inverted``. Board frame: OpenCV's, origin at the pattern's outer
corner, x along the columns, y along the rows, z into the board.
"""
from __future__ import annotations

import cv2
import numpy as np

from .config import ConfigError
from .geometry import make_T

MIN_CORNERS = 6  # fewer corners do not fix a board pose reliably
MIN_THICKNESS_M = 1e-4  # a printed sheet still has a top and a bottom face


def board_thickness(board_cfg: dict) -> float:
    return max(board_cfg["thickness_m"], MIN_THICKNESS_M)


def make_board(board_cfg: dict) -> cv2.aruco.CharucoBoard:
    """The OpenCV board of a ``calibration/board`` config section; ConfigError where OpenCV has no such
    dictionary or the markers do not fit in their squares."""
    name = board_cfg["dictionary"]
    dictionary_id = getattr(cv2.aruco, name, None)
    if not isinstance(dictionary_id, int):
        raise ConfigError(f"config key 'calibration/board/dictionary': OpenCV has no ArUco dictionary {name!r} "
                          f"(names such as DICT_4X4_50, DICT_5X5_100)")
    if not board_cfg["marker_m"] < board_cfg["square_m"]:
        raise ConfigError(f"config key 'calibration/board/marker_m': {board_cfg['marker_m']} m markers do not fit "
                          f"in {board_cfg['square_m']} m squares")
    return cv2.aruco.CharucoBoard(tuple(board_cfg["squares"]), board_cfg["square_m"], board_cfg["marker_m"],
                                  cv2.aruco.getPredefinedDictionary(dictionary_id))


def board_corners(board_cfg: dict) -> np.ndarray:
    """(N,3) chessboard corners in the board frame, metres, indexed by ChArUco corner id."""
    return np.asarray(make_board(board_cfg).getChessboardCorners(), dtype=float).reshape(-1, 3)


def T_world_board_on_table(board_cfg: dict) -> np.ndarray:
    """(4,4) board frame -> world when the board lies flat on the table with its pattern centred on the
    world origin, board x along world x and board y along world -y (so board z points down)."""
    cols, rows = board_cfg["squares"]
    sq = board_cfg["square_m"]
    return make_T(np.diag([1.0, -1.0, -1.0]), np.array([-cols * sq / 2, rows * sq / 2, board_thickness(board_cfg)]))


class Detector:
    """ChArUco corner detection on RGB or grey images."""

    def __init__(self, board_cfg: dict):
        self.board = make_board(board_cfg)
        self.inverted = bool(board_cfg.get("inverted", False))
        params = cv2.aruco.CharucoParameters()
        params.minMarkers = 2
        detector_params = cv2.aruco.DetectorParameters()
        detector_params.cornerRefinementMethod = cv2.aruco.CORNER_REFINE_SUBPIX
        self.detector = cv2.aruco.CharucoDetector(self.board, params, detector_params)
        self.n_corners = len(self.board.getChessboardCorners())

    def detect(self, image: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Corner ids (n,) and pixel positions (n,2) in one image; empty arrays when the board is not seen."""
        grey = cv2.cvtColor(image, cv2.COLOR_RGB2GRAY) if image.ndim == 3 else image
        if self.inverted:
            grey = 255 - grey
        corners, ids, _, _ = self.detector.detectBoard(grey)
        if ids is None or len(ids) == 0:
            return np.zeros(0, int), np.zeros((0, 2))
        return ids.ravel().astype(int), corners.reshape(-1, 2).astype(float)
