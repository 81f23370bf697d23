"""Real captures into the capture schema: RealSense recordings (.bag, .db3) and folders of images."""
import json

import cv2
import numpy as np
import pytest

from pipeline.artifact import open_artifact
from pipeline.geometry import invert_T

from .conftest import external, run_module
from .realsense_recording import BASELINE, R_COLOR_DEPTH, T_COLOR_DEPTH, pixel_value, write_recording

pytest.importorskip("pyrealsense2", reason="pyrealsense2 is not installed")


def _ingest_realsense(out, cameras: dict, *extra):
    args = ["pipeline.ingest", "realsense", "--out", str(out)]
    for name, path in cameras.items():
        args += ["--camera", f"{name}={path}"]
    return run_module(*args, *extra)


def test_real_bag_imports_with_its_recorded_intrinsics(tmp_path):
    bag = external("librealsense/single_depth_color_640x480.bag")
    out = tmp_path / "bag.zarr"
    result = _ingest_realsense(out, {"d435": bag})
    assert result.returncode == 0, result.stderr
    cap = open_artifact(out, "capture")
    assert cap.attrs["streams"] == ["color", "depth"] and cap.attrs["device"] == "Intel RealSense D435"
    assert cap["color"].shape == (1, 1, 480, 640, 3) and cap["depth"].shape == (1, 1, 480, 640)
    # Values recorded in the file (rs-enumerate-devices style intrinsics of this D435).
    np.testing.assert_allclose(cap["K_depth"][0], [[390.431, 0, 331.388], [0, 390.431, 242.187], [0, 0, 1]], atol=1e-3)
    np.testing.assert_allclose(cap["K_color"][0], [[613.204, 0, 319.939], [0, 613.419, 239.183], [0, 0, 1]], atol=1e-3)
    assert cap["depth_scale_m"][0] == pytest.approx(0.001)
    T = cap["T_color_depth"][0]
    np.testing.assert_allclose(T[:3, 3], [0.0143113, 0.000602306, 0.000610804], atol=1e-6)
    assert np.allclose(T[:3, :3] @ T[:3, :3].T, np.eye(3), atol=1e-5)
    assert 0 < cap["depth"][0, 0].max() * 0.001 < 10 and cap["color"][0, 0].std() > 10
    # One depth frame has no colour frame within a frame period: counted, not hidden.
    sync = cap.attrs["sync"]["cameras"]["d435"]
    assert sync["frames"] == {"depth": 2, "color": 1} and sync["left_out_within_camera"]["depth"] == 1


@pytest.fixture(scope="module")
def recordings(tmp_path_factory):
    """Four .db3 recordings of 12 frames; camera c2 dropped frame 5, all have 2 ms timestamp jitter."""
    root = tmp_path_factory.mktemp("db3")
    paths = {}
    for c in range(4):
        paths[f"c{c}"] = root / f"c{c}.db3"
        write_recording(paths[f"c{c}"], c, [f for f in range(12) if not (c == 2 and f == 5)], jitter_s=0.002)
    return paths


def test_db3_four_cameras_matched_by_timestamp(recordings, tmp_path):
    out = tmp_path / "cap.zarr"
    result = _ingest_realsense(out, recordings)
    assert result.returncode == 0, result.stderr
    assert "11 framesets matched" in result.stderr
    cap = open_artifact(out, "capture")
    assert cap.attrs["streams"] == ["color", "depth", "ir_left", "ir_right"]
    assert cap["color"].shape == (4, 11, 48, 64, 3)
    frames = [f for f in range(12) if f != 5]
    for c in range(4):
        for t, f in enumerate(frames):
            for k, stream in enumerate(["depth", "ir_left", "ir_right", "color"]):
                assert (cap[stream][c, t] == pixel_value(c, f, k)).all(), (c, t, stream)
    np.testing.assert_array_equal(cap["frame_numbers"][:], np.tile(frames, (4, 1)))
    sync = cap.attrs["sync"]["cameras"]
    assert [sync[f"c{c}"]["unmatched_across_cameras"] for c in range(4)] == [1, 1, 0, 1]
    np.testing.assert_allclose(cap["T_color_depth"][1, :3, :3], R_COLOR_DEPTH, atol=1e-6)
    np.testing.assert_allclose(cap["T_color_depth"][1, :3, 3], T_COLOR_DEPTH, atol=1e-6)
    np.testing.assert_allclose(cap["T_irright_depth"][:, 0, 3], -BASELINE, atol=1e-6)
    assert cap["K_color"][0, 0, 0] == pytest.approx(60.0) and cap["K_depth"][0, 0, 0] == pytest.approx(50.0)
    assert np.all(np.diff(cap["timestamps"][0]) > 0)


def test_cameras_with_different_frame_counts_are_refused(recordings, tmp_path):
    short = tmp_path / "short.db3"
    write_recording(short, 3, list(range(6)), jitter_s=0.002)
    out = tmp_path / "cap.zarr"
    result = _ingest_realsense(out, {**recordings, "c3": short})
    assert result.returncode != 0
    assert "camera c0" in result.stderr and "frame counts: c0 12, c1 12, c2 11, c3 6" in result.stderr
    assert not out.exists()


def test_cameras_with_different_resolutions_are_refused(recordings, tmp_path):
    other = tmp_path / "big.db3"
    write_recording(other, 1, list(range(12)), size=(80, 60))
    result = _ingest_realsense(tmp_path / "cap.zarr", {**recordings, "c1": other})
    assert result.returncode != 0
    assert "resolution" in result.stderr and "c1" in result.stderr and "[80, 60]" in result.stderr


def test_camera_whose_streams_never_meet_is_named(monkeypatch, tmp_path):
    """Colour stamped on another clock than depth (100 s apart): not one frame set within the camera."""
    import pipeline.ingest as ingest

    def recording(camera, colour_offset_s):
        times = np.arange(10) / 30
        rec = ingest.Recording(camera, f"/data/{camera}.bag", "D455",
                               {s: {"fps": 30, "width": 2, "height": 2} for s in ("depth", "color")})
        rec.frames = {"depth": [(t, i, np.zeros((2, 2), np.uint16)) for i, t in enumerate(times)],
                      "color": [(t + colour_offset_s, i, np.zeros((2, 2, 3), np.uint8)) for i, t in enumerate(times)]}
        return rec

    recordings = {"cam0": recording("cam0", 100.0), "cam1": recording("cam1", 0.0)}
    monkeypatch.setattr(ingest, "read_recording", lambda camera, path: recordings[camera])
    out = tmp_path / "cap.zarr"
    with pytest.raises(ingest.IngestError, match=r"camera cam0 \(/data/cam0.bag\): no frame set .* color 100.000"):
        ingest.ingest_realsense({c: f"/data/{c}.bag" for c in recordings}, str(out), "lab", "test_0000", "test")
    assert not out.exists()


@pytest.mark.parametrize("damage", ["truncated", "empty", "missing", "garbage"])
def test_broken_recordings_name_the_camera_and_file(recordings, tmp_path, damage):
    bad = tmp_path / "bad.db3"
    if damage == "truncated":
        data = recordings["c1"].read_bytes()
        bad.write_bytes(data[: len(data) // 2])
    elif damage == "empty":
        write_recording(bad, 1, [])
    elif damage == "garbage":
        bad = tmp_path / "bad.bag"
        bad.write_bytes(np.random.default_rng(0).bytes(4096))
    out = tmp_path / "cap.zarr"
    result = _ingest_realsense(out, {**recordings, "c1": bad})
    assert result.returncode != 0
    assert "camera c1" in result.stderr and str(bad) in result.stderr
    assert "Traceback" not in result.stderr
    assert not out.exists() and not list(tmp_path.glob("cap.zarr*"))


def test_image_folder_of_a_real_four_realsense_capture(tmp_path):
    demo = external("gs-dynamics-demo")
    out = tmp_path / "demo.zarr"
    result = run_module("pipeline.ingest", "images", str(demo), "--cameras", "0", "1", "2", "3",
                        "--color", "img_{camera}.png", "--intrinsics", "intr_list.npy",
                        "--cam-to-world", "R_list.npy", "t_list.npy", "--out", str(out))
    assert result.returncode == 0, result.stderr
    cap = open_artifact(out, "capture")
    assert cap["color"].shape == (4, 1, 480, 640, 3) and cap.attrs["streams"] == ["color"]
    np.testing.assert_array_equal(cap["K_color"][:], np.load(demo / "intr_list.npy"))
    img = cv2.cvtColor(cv2.imread(str(demo / "img_2.png")), cv2.COLOR_BGR2RGB)
    np.testing.assert_array_equal(cap["color"][2, 0], img)
    R, t = np.load(demo / "R_list.npy"), np.load(demo / "t_list.npy")
    T_wc = invert_T(cap["T_cw_color"][1])
    np.testing.assert_allclose(T_wc[:3, :3], R[1], atol=1e-9)
    np.testing.assert_allclose(T_wc[:3, 3], t[1], atol=1e-9)


def _image_folder(root, cameras=("a", "b"), frames=3, depth_dtype=np.uint16, skip=None, depth_size=(30, 40)):
    for cam in cameras:
        for f in range(frames):
            if skip == (cam, f):
                continue
            (root / "color" / cam).mkdir(parents=True, exist_ok=True)
            (root / "depth" / cam).mkdir(parents=True, exist_ok=True)
            cv2.imwrite(str(root / "color" / cam / f"{f:06d}.png"), np.full((30, 40, 3), 10 * f, np.uint8))
            cv2.imwrite(str(root / "depth" / cam / f"{f:06d}.png"), np.full(depth_size, (500 + f) % np.iinfo(depth_dtype).max, depth_dtype))
    K = {"K": [[50, 0, 20], [0, 50, 15], [0, 0, 1]], "dist": [0.1, -0.05]}
    (root / "intrinsics.json").write_text(json.dumps({cam: K for cam in cameras}))


def _ingest_images(root, out, *extra):
    return run_module("pipeline.ingest", "images", str(root), "--cameras", "a", "b",
                      "--depth", "depth/{camera}/{frame}.png", "--out", str(out), *extra)


def test_image_folder_with_depth(tmp_path):
    _image_folder(tmp_path / "lab")
    out = tmp_path / "cap.zarr"
    result = _ingest_images(tmp_path / "lab", out)
    assert result.returncode == 0, result.stderr
    cap = open_artifact(out, "capture")
    assert cap["depth"].shape == (2, 3, 30, 40) and cap["depth"].dtype == np.uint16
    assert cap["depth"][1, 2].max() == 502 and cap["depth_scale_m"][0] == pytest.approx(0.001)
    np.testing.assert_allclose(cap["dist_color"][0], [0.1, -0.05, 0, 0, 0])
    np.testing.assert_allclose(cap["timestamps"][0], [0, 1 / 30, 2 / 30])


@pytest.mark.parametrize("problem, expected", [
    ("missing-frame", "frame count"),
    ("8-bit-depth", "16-bit"),
    ("no-intrinsics", "intrinsics.json"),
    ("intrinsics-not-json", "intrinsics.json: not valid JSON"),
    ("intrinsics-without-K", "camera b needs a 3x3 'K'"),
    ("depth-at-half-size", "depth images are (15, 20) (H, W), colour (30, 40)"),
    ("frame-step-0", "--frame-step must be at least 1"),
    ("missing-pose-file", "t.npy does not load"),
    ("short-translations", "expected rotations (2, 3, 3) and translations (2, 3)"),
])
def test_bad_image_folders(tmp_path, problem, expected):
    root = tmp_path / "lab"
    _image_folder(root, skip=("b", 1) if problem == "missing-frame" else None,
                  depth_dtype=np.uint8 if problem == "8-bit-depth" else np.uint16,
                  depth_size=(15, 20) if problem == "depth-at-half-size" else (30, 40))
    extra = []
    if problem == "no-intrinsics":
        (root / "intrinsics.json").unlink()
    elif problem == "intrinsics-not-json":
        (root / "intrinsics.json").write_text('{"a": {"K": ')
    elif problem == "intrinsics-without-K":
        table = json.loads((root / "intrinsics.json").read_text())
        (root / "intrinsics.json").write_text(json.dumps({**table, "b": {"k": table["b"]["K"]}}))
    elif problem == "frame-step-0":
        extra = ["--frame-step", "0"]
    elif problem in ("missing-pose-file", "short-translations"):
        np.save(root / "R.npy", np.tile(np.eye(3), (2, 1, 1)))
        if problem == "short-translations":
            np.save(root / "t.npy", np.zeros(5))
        extra = ["--cam-to-world", "R.npy", "t.npy"]
    out = tmp_path / "cap.zarr"
    result = _ingest_images(root, out, *extra)
    assert result.returncode != 0 and expected in result.stderr and "Traceback" not in result.stderr, result.stderr
    assert not out.exists() and not list(tmp_path.glob("cap.zarr.partial*"))
