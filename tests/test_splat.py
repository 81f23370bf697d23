"""The renderer: the tile-culled PyTorch reference against the compositing equation evaluated at every
pixel, contributions for id voting, and (on a GPU) gsplat against the reference."""
from __future__ import annotations

import numpy as np
import pytest
import torch

from pipeline.splat import brute_force, contributions, project, render

from .conftest import external, torch_threads


def gaussians(n: int, seed: int, dtype=torch.float64, spread: float = 0.1, opacity=(0.05, 0.95)):
    g = torch.Generator().manual_seed(seed)
    means = torch.randn(n, 3, generator=g, dtype=dtype) * spread
    quats = torch.randn(n, 4, generator=g, dtype=dtype)
    scales = torch.rand(n, 3, generator=g, dtype=dtype) * 0.03 + 0.005
    opac = torch.rand(n, generator=g, dtype=dtype) * (opacity[1] - opacity[0]) + opacity[0]
    feats = torch.rand(n, 4, generator=g, dtype=dtype)
    return means, quats, scales, opac, feats


def cameras(dtype=torch.float64):
    K = torch.tensor([[[40.0, 0, 23.5], [0, 40, 15.5], [0, 0, 1]], [[55.0, 0, 20.0], [0, 50, 17.0], [0, 0, 1]]],
                     dtype=dtype)
    T = torch.eye(4, dtype=dtype).repeat(2, 1, 1)
    T[:, 2, 3] = 0.6
    T[1, 0, 3] = 0.05
    c, s = np.cos(0.3), np.sin(0.3)
    T[1, :3, :3] = torch.tensor([[c, 0, s], [0, 1, 0], [-s, 0, c]], dtype=dtype)
    return K, T


@pytest.mark.parametrize("case", ["sparse", "dense"])
def test_reference_matches_brute_force(case):
    """Values and gradients of the tile-culled renderer equal the per-pixel evaluation over all Gaussians;
    'dense' stacks 300 nearly opaque Gaussians so compositing stops early (transmittance < 1e-4)."""
    n, spread, opacity = (30, 0.1, (0.05, 0.95)) if case == "sparse" else (300, 0.05, (0.69, 0.99))
    params = gaussians(n, 0, spread=spread, opacity=opacity)
    K, T = cameras()
    a_in = [p.clone().requires_grad_(True) for p in params]
    b_in = [p.clone().requires_grad_(True) for p in params]
    a = render(*a_in, K, T, 48, 32, backend="torch")
    b = brute_force(*b_in, K, T, 48, 32)
    assert a.alpha.max() > 0.5
    if case == "dense":
        assert (a.alpha > 0.999).float().mean() > 0.05  # early termination is exercised
    for x, y in zip(a, b):
        torch.testing.assert_close(x, y, rtol=1e-9, atol=1e-9)
    w = torch.rand_like(a.features)
    for out, inputs in ((a, a_in), (b, b_in)):
        ((out.features * w).sum() + out.depth.sum() + out.alpha.sum()).backward()
    for x, y in zip(a_in, b_in):
        assert y.grad.abs().max() > 0
        torch.testing.assert_close(x.grad, y.grad, rtol=1e-7, atol=1e-7)


def test_float32_close_to_float64():
    params = gaussians(200, 1)
    K, T = cameras()
    ref = brute_force(*params, K, T, 48, 32)
    out = render(*(p.float() for p in params), K.float(), T.float(), 48, 32, backend="torch")
    for x, y in zip(out, ref):
        assert (x.double() - y).abs().max() < 1e-4


def test_gradients_round_the_same_at_any_thread_count():
    """One 8x8 tile (a chunk of one tile made the exponent a single sgemm, whose backward rounded with the
    thread count) and a 48x32 image: float32 gradients at one and two threads are bitwise equal."""
    _, T = cameras(torch.float32)
    for width, height in ((8, 8), (48, 32)):
        f = float(width)
        K = torch.tensor([[[f, 0, (width - 1) / 2], [0, f, (height - 1) / 2], [0, 0, 1]]])
        grads = []
        for n in (1, 2):
            with torch_threads(n):
                inputs = [p.float().requires_grad_(True) for p in gaussians(60, 2)]
                out = render(*inputs, K, T[:1], width, height, backend="torch")
                ((out.features ** 2).sum() + out.depth.sum() + out.alpha.sum()).backward()
            grads.append([x.grad for x in inputs])
        assert grads[0][0].abs().max() > 0
        for a, b in zip(*grads):
            assert torch.equal(a, b), (width, height)


def test_depth_and_culling():
    """One Gaussian straight ahead renders at its depth; one behind the camera or off-image is culled."""
    K, T = cameras()
    means = torch.tensor([[0.0, 0.0, 0.2], [0.0, 0.0, -1.0], [5.0, 0.0, 0.0]], dtype=torch.float64)
    quats = torch.tensor([[0.0, 0, 0, 1]] * 3, dtype=torch.float64)
    scales = torch.full((3, 3), 0.02, dtype=torch.float64)
    opac = torch.full((3,), 0.9, dtype=torch.float64)
    out = render(means, quats, scales, opac, torch.ones(3, 1, dtype=torch.float64), K[:1], T[:1], 48, 32)
    proj = project(means, quats, scales, opac, K[:1], T[:1], 48, 32)
    assert (proj.extent[0, 1:] == 0).all() and (proj.extent[0, 0] > 0).all()
    v, u = 15, 23  # half a pixel from the principal point (23.5, 15.5) in x and y
    sigma2 = (0.02 * 40 / 0.8) ** 2 + 0.3  # pixels^2, with the 0.3 px^2 blur
    assert out.alpha[0, v, u] == pytest.approx(0.9 * np.exp(-0.5 * 0.5 / sigma2), rel=1e-6)
    assert out.depth[0, v, u] == pytest.approx(0.8, abs=1e-6)
    assert out.alpha[0, 0, 0] == 0 and out.depth[0, 0, 0] == 0


def test_contributions_are_max_weights_per_label():
    """contributions() = the largest compositing weight of each Gaussian in each label's pixels."""
    params = gaussians(60, 2, spread=0.06)
    K, T = cameras()
    H, W = 32, 48
    labels = torch.zeros(2, H, W, dtype=torch.long)
    labels[:, :, 16:32] = 1
    labels[:, 20:, :] = 2
    got = contributions(*params[:4], K, T, labels, 3)
    # Weights per pixel from the brute force: render each Gaussian's indicator as a feature.
    eye = torch.eye(60, dtype=torch.float64)
    weights = brute_force(*params[:4], eye, K, T, W, H).features                 # (C,H,W,N)
    for lab in range(3):
        sel = labels == lab
        want = torch.stack([weights[c][sel[c]].max(0).values for c in range(2)])
        torch.testing.assert_close(got[:, :, lab], want, rtol=1e-9, atol=1e-12)
    assert got.max() > 0.3


def test_bad_backend():
    params = gaussians(5, 0)
    K, T = cameras()
    with pytest.raises(ValueError, match="gsplat backend needs CUDA"):
        render(*params, K, T, 48, 32, backend="gsplat")
    with pytest.raises(ValueError, match="unknown renderer backend"):
        render(*params, K, T, 48, 32, backend="vulkan")


@pytest.mark.gpu
def test_gsplat_matches_reference_on_garden():
    """gsplat's CUDA rasterizer and the reference agree in values and gradients (the gsplat garden
    harness: 5,000 of its points with random scales, rotations and opacities, 160x120)."""
    if not torch.cuda.is_available():
        pytest.skip("no CUDA device")
    pytest.importorskip("gsplat", reason="gsplat is not installed (pip install gsplat on a CUDA machine)")
    data = np.load(external("gsplat") / "test_garden.npz")
    from bench.renderer import garden_inputs

    inputs = garden_inputs(data, 5000, 160, 120, device="cuda")
    outs, grads = {}, {}
    for backend in ("torch", "gsplat"):
        leaves = [x.clone().requires_grad_(True) for x in inputs[:5]]
        out = render(*leaves, *inputs[5:], 160, 120, backend=backend)
        (out.features.sum() + out.alpha.sum()).backward()
        outs[backend], grads[backend] = out, [x.grad for x in leaves]
    for x, y in zip(outs["torch"][::2], outs["gsplat"][::2]):  # features and alpha
        assert (x - y).abs().mean() < 2e-3 and (x - y).abs().max() < 0.05
    for x, y in zip(grads["torch"], grads["gsplat"]):
        assert torch.nn.functional.cosine_similarity(x.flatten(), y.flatten(), dim=0) > 0.99


@pytest.mark.slow
def test_gs_dynamics_demo_renders_onto_its_masks():
    """The real demo's trained Gaussians, posed as its README says (rotation back, then a rigid fit onto
    its fused cloud) and refined by silhouette registration, cover the real masks: alpha IoU >= 0.7 in
    the mean over the four views; id voting puts nearly all object Gaussians inside the masks."""
    from pipeline.external import gs_dynamics_demo, move_gaussians, register_to_masks

    from bench.renderer import demo_figures

    d = gs_dynamics_demo(external("gs-dynamics-demo"))
    assert d["offset_m"] < 0.005
    T = register_to_masks(d["gaussians"], d["K"], d["T_cw"], d["masks"], scale=0.25, steps=150)
    figures = demo_figures(d, move_gaussians(d["gaussians"], T))
    assert figures["alpha_iou_mean"] >= 0.7, figures
    assert figures["voted_inside_masks_share"] > 0.6, figures  # 0.71: a thin rope, centres at its edges
