import math
import sys
import types

import numpy as np
import pytest
import torch

from vqgen import metrics as ev
from vqgen.errors import ConfigError


# ---------------------------------------------------------------- MSE / PSNR


def test_mse_per_image_matches_hand_numbers():
    x = torch.zeros(2, 3, 2, 2)
    y = x.clone()
    y[0, 1, 0, 1] = 0.5  # one of 12 values off by 0.5
    y[1] += 0.1  # every value off by 0.1
    got = ev.mse(x, y)
    assert got.shape == (2,) and got.dtype == torch.float64
    assert got.tolist() == pytest.approx([0.25 / 12, 0.01], rel=1e-6)


def test_mse_rejects_mismatched_shapes():
    with pytest.raises(ValueError):
        ev.mse(torch.zeros(1, 3, 4, 4), torch.zeros(1, 3, 4, 5))


def test_psnr_from_mse():
    assert ev.psnr_from_mse(0.01) == pytest.approx(20.0)
    assert ev.psnr_from_mse(1.0) == pytest.approx(0.0)
    assert ev.psnr_from_mse(1e-4) == pytest.approx(40.0)
    assert ev.psnr_from_mse(0.0) == math.inf
    assert math.isnan(ev.psnr_from_mse(math.nan))
    with pytest.raises(ValueError):
        ev.psnr_from_mse(-1.0)


# ---------------------------------------------------------------- SSIM


def _naive_ssim(x: np.ndarray, y: np.ndarray) -> float:
    """Wang et al. 2004, one (C, H, W) pair, window by window with explicit weighted sums."""
    r = np.arange(11) - 5.0
    g = np.exp(-(r**2) / (2 * 1.5**2))
    w = np.outer(g, g)
    w /= w.sum()
    c1, c2 = 0.01**2, 0.03**2
    vals = []
    for c in range(x.shape[0]):
        for i in range(x.shape[1] - 10):
            for j in range(x.shape[2] - 10):
                px, py = x[c, i : i + 11, j : j + 11], y[c, i : i + 11, j : j + 11]
                mx, my = (w * px).sum(), (w * py).sum()
                vx, vy = (w * (px - mx) ** 2).sum(), (w * (py - my) ** 2).sum()
                cxy = (w * (px - mx) * (py - my)).sum()
                vals.append(((2 * mx * my + c1) * (2 * cxy + c2)) / ((mx**2 + my**2 + c1) * (vx + vy + c2)))
    return float(np.mean(vals))


def test_ssim_matches_naive_window_loop():
    g = torch.Generator().manual_seed(0)
    x = torch.rand(2, 3, 13, 15, generator=g)
    y = (x + 0.2 * torch.randn(2, 3, 13, 15, generator=g)).clamp(0, 1)
    got = ev.ssim(x, y)
    assert got.shape == (2,) and got.dtype == torch.float64
    want = [_naive_ssim(x[i].double().numpy(), y[i].double().numpy()) for i in range(2)]
    assert got.tolist() == pytest.approx(want, rel=1e-9, abs=1e-12)


def test_ssim_of_constant_images_is_closed_form():
    a, b = 0.3, 0.7
    x, y = torch.full((1, 3, 12, 12), a), torch.full((1, 3, 12, 12), b)
    # no variance anywhere: the contrast-structure term is C2 / C2 = 1, the luminance term is what is left
    want = (2 * a * b + 0.01**2) / (a * a + b * b + 0.01**2)
    assert ev.ssim(x, y).item() == pytest.approx(want, rel=1e-6)


def test_ssim_properties():
    g = torch.Generator().manual_seed(1)
    x = torch.rand(3, 3, 16, 16, generator=g)
    assert torch.allclose(ev.ssim(x, x), torch.ones(3, dtype=torch.float64), atol=1e-12)
    noise = torch.randn(3, 3, 16, 16, generator=g)
    y1, y2 = (x + 0.05 * noise).clamp(0, 1), (x + 0.3 * noise).clamp(0, 1)
    assert torch.allclose(ev.ssim(x, y1), ev.ssim(y1, x), atol=1e-12)
    s1, s2 = ev.ssim(x, y1), ev.ssim(x, y2)
    assert bool((s1 < 1).all()) and bool((s2 < s1).all())


def test_ssim_rejects_images_smaller_than_the_window():
    with pytest.raises(ValueError):
        ev.ssim(torch.zeros(1, 3, 10, 16), torch.zeros(1, 3, 10, 16))


# ---------------------------------------------------------------- codes


def test_code_usage_hand_numbers():
    u = ev.code_usage(torch.tensor([[0, 0], [1, 2]]), 5)
    # p = (1/2, 1/4, 1/4): H = 1.5 bits, perplexity = 2^1.5
    assert u["codes_used"] == 3 and u["num_codes"] == 5
    assert u["unigram_entropy_bits"] == pytest.approx(1.5)
    assert u["perplexity"] == pytest.approx(2**1.5)
    uni = ev.code_usage(torch.arange(8, dtype=torch.uint8) % 4, 4)
    assert uni["perplexity"] == pytest.approx(4.0) and uni["unigram_entropy_bits"] == pytest.approx(2.0)
    single = ev.code_usage(torch.full((3, 3), 7), 8)
    assert single["codes_used"] == 1 and single["perplexity"] == pytest.approx(1.0)
    assert single["unigram_entropy_bits"] == pytest.approx(0.0)


def test_code_usage_from_histogram_equals_from_codes():
    codes = torch.tensor([3, 3, 3, 0, 1, 1])
    hist = torch.tensor([1, 2, 0, 3])
    assert ev.code_usage(hist, 4, counts=True) == ev.code_usage(codes, 4)


def test_code_usage_rejects_bad_input():
    with pytest.raises(ValueError):
        ev.code_usage(torch.tensor([0, 4]), 4)
    with pytest.raises(ValueError):
        ev.code_usage(torch.tensor([-1, 0]), 4)
    with pytest.raises(ValueError):
        ev.code_usage(torch.zeros(0, dtype=torch.long), 4)
    with pytest.raises(ValueError):
        ev.code_usage(torch.tensor([1, 2]), 4, counts=True)


def test_bits_per_code_and_dim():
    assert ev.bits_per_code(math.log(2)) == pytest.approx(1.0)
    assert ev.bits_per_code(math.log(256)) == pytest.approx(8.0)
    # 8x8 grid at 2 bits per code = 128 bits over 3*32*32 = 3072 subpixels
    assert ev.bits_per_dim(2.0, 64, (3, 32, 32)) == pytest.approx(128 / 3072)


def test_running_stats_equal_whole_set_figures():
    g = torch.Generator().manual_seed(2)
    x = torch.rand(5, 3, 12, 12, generator=g)
    y = (x + 0.1 * torch.randn(5, 3, 12, 12, generator=g)).clamp(0, 1)
    codes = torch.randint(0, 6, (5, 4, 4), generator=g)
    rs = ev.RunningStats(num_codes=6)
    for i in (0, 2):
        rs.update_images(x[i : i + 2], y[i : i + 2])
        rs.update_codes(codes[i : i + 2])
    rs.update_images(x[4:], y[4:])
    rs.update_codes(codes[4:])
    want_mse = float(((x.double() - y.double()) ** 2).mean())  # equal-size images: mean of means = global mean
    s = rs.summary()
    assert s["images"] == 5
    assert s["mse"] == pytest.approx(want_mse, rel=1e-6)  # float32 differences
    assert s["psnr"] == pytest.approx(10 * math.log10(1 / want_mse), rel=1e-6)
    assert s["ssim"] == pytest.approx(float(np.mean([_naive_ssim(x[i].double().numpy(), y[i].double().numpy())
                                                      for i in range(5)])), rel=1e-9)
    assert torch.equal(rs.hist, torch.bincount(codes.flatten(), minlength=6))
    assert s["codes_used"] == ev.code_usage(codes, 6)["codes_used"]
    assert s["perplexity"] == pytest.approx(ev.code_usage(codes, 6)["perplexity"])


def test_running_stats_empty():
    rs = ev.RunningStats()
    assert rs.summary() == {} and math.isnan(rs.mean_mse)
    with pytest.raises(ValueError):
        rs.update_codes(torch.tensor([0]))


# ---------------------------------------------------------------- Frechet distance


def _np_frechet(mu1, s1, mu2, s2) -> float:
    """Independent route: eigenvalues of the non-symmetric product s1 s2 (real, >= 0 for PSD s1, s2)."""
    ev_ = np.linalg.eigvals(s1 @ s2).real.clip(min=0)
    return float(((mu1 - mu2) ** 2).sum() + np.trace(s1) + np.trace(s2) - 2 * np.sqrt(ev_).sum())


def test_frechet_diagonal_closed_form():
    a, b = torch.tensor([1.0, 4.0, 9.0]), torch.tensor([4.0, 1.0, 9.0])
    mu1, mu2 = torch.tensor([0.0, 1.0, 2.0]), torch.tensor([1.0, 1.0, 0.0])
    # sum (sqrt a - sqrt b)^2 = 1 + 1 + 0, ||dmu||^2 = 1 + 0 + 4
    assert ev.frechet_distance(mu1, torch.diag(a), mu2, torch.diag(b)) == pytest.approx(7.0, abs=1e-12)


def test_frechet_2x2_non_diagonal_by_hand():
    s1 = torch.tensor([[2.0, 1.0], [1.0, 2.0]])
    s2 = torch.tensor([[1.0, 0.0], [0.0, 4.0]])
    mu1, mu2 = torch.tensor([0.0, 0.0]), torch.tensor([1.0, 2.0])
    # s1 s2 = [[2, 4], [1, 8]]: trace 10, det 12; for a 2x2 with eigenvalues l1, l2 > 0,
    # Tr sqrtm = sqrt(l1) + sqrt(l2) = sqrt(trace + 2 sqrt(det)) = sqrt(10 + 4 sqrt 3) = 4.1143898...
    # FD = ||dmu||^2 + Tr s1 + Tr s2 - 2 Tr sqrtm = 5 + 4 + 5 - 8.2287795... = 5.7712205...
    want = 14 - 2 * math.sqrt(10 + 4 * math.sqrt(3))
    assert want == pytest.approx(5.7712204, abs=1e-6)
    assert ev.frechet_distance(mu1, s1, mu2, s2) == pytest.approx(want, abs=1e-12)
    assert ev.frechet_distance(mu2, s2, mu1, s1) == pytest.approx(want, abs=1e-12)


def test_frechet_identical_and_symmetric_and_matches_numpy():
    g = torch.Generator().manual_seed(3)
    f1 = torch.randn(40, 6, generator=g, dtype=torch.float64)
    f2 = torch.randn(30, 6, generator=g, dtype=torch.float64) * 1.5 + 0.3
    m1, s1 = ev.feature_stats(f1)
    m2, s2 = ev.feature_stats(f2)
    assert ev.frechet_distance(m1, s1, m1, s1) == pytest.approx(0.0, abs=1e-9)
    d12, d21 = ev.frechet_distance(m1, s1, m2, s2), ev.frechet_distance(m2, s2, m1, s1)
    assert d12 == pytest.approx(d21, rel=1e-9)
    assert d12 == pytest.approx(_np_frechet(m1.numpy(), s1.numpy(), m2.numpy(), s2.numpy()), rel=1e-8)
    assert ev.fid_from_features(f1, f2) == pytest.approx(d12, rel=1e-12)


def test_frechet_with_singular_covariance():
    # rank-1 covariances (fewer samples than dims in real FID): still finite and equal to the numpy route
    u, v = torch.tensor([1.0, 2.0, 0.0]), torch.tensor([0.0, 1.0, 1.0])
    s1, s2 = torch.outer(u, u), torch.outer(v, v)
    z = torch.zeros(3)
    got = ev.frechet_distance(z, s1, z, s2)
    assert got == pytest.approx(_np_frechet(z.numpy(), s1.numpy(), z.numpy(), s2.numpy()), abs=1e-9)
    # by hand: Tr s1 = 5, Tr s2 = 2, s1 s2 has the one nonzero eigenvalue (u.v)^2 = 4 -> 5 + 2 - 2*2 = 3
    assert got == pytest.approx(3.0, abs=1e-9)


def test_frechet_rejects_bad_shapes():
    with pytest.raises(ValueError):
        ev.frechet_distance(torch.zeros(2), torch.eye(3), torch.zeros(2), torch.eye(2))


def test_feature_stats_hand_numbers():
    f = torch.tensor([[0.0, 0.0], [2.0, 0.0], [0.0, 2.0], [2.0, 2.0]])
    mu, sigma = ev.feature_stats(f)
    # deviations are +-1 on each axis, uncorrelated: variance 4 / (4 - 1)
    assert mu.tolist() == [1.0, 1.0] and sigma.dtype == torch.float64
    assert torch.allclose(sigma, torch.tensor([[4 / 3, 0.0], [0.0, 4 / 3]], dtype=torch.float64))
    g = torch.Generator().manual_seed(4)
    r = torch.randn(9, 4, generator=g)
    assert np.allclose(ev.feature_stats(r)[1].numpy(), np.cov(r.double().numpy(), rowvar=False))
    with pytest.raises(ValueError):
        ev.feature_stats(torch.zeros(1, 4))


def test_fid_warns_when_fewer_samples_than_dims(capsys):
    g = torch.Generator().manual_seed(5)
    ev.fid_from_features(torch.randn(4, 8, generator=g), torch.randn(5, 8, generator=g))
    assert "biased" in capsys.readouterr().err


# ---------------------------------------------------------------- Inception features (never downloads)


def _block_torch_fidelity(monkeypatch):
    monkeypatch.setitem(sys.modules, "torch_fidelity", None)  # a None entry makes the import raise ImportError
    monkeypatch.setitem(sys.modules, "torch_fidelity.feature_extractor_inceptionv3", None)


def test_inception_features_without_torch_fidelity_says_how_to_get_it(monkeypatch):
    _block_torch_fidelity(monkeypatch)
    with pytest.raises(ConfigError) as e:
        ev.inception_features(torch.zeros(2, 3, 8, 8, dtype=torch.uint8), "cpu", 2)
    msg = str(e.value)
    assert "\n" not in msg
    assert "pip install 'vqgen[fid]'" in msg and ev.INCEPTION_WEIGHTS_FILE in msg and "offline" in msg


class _FakeExtractor(torch.nn.Module):
    made: list = []

    def __init__(self, name, features_list, feature_extractor_weights_path=None, **kw):
        super().__init__()
        _FakeExtractor.made.append(feature_extractor_weights_path)

    def forward(self, x):
        assert x.dtype == torch.uint8 and x.shape[0] <= 2
        m = x.float().mean(dim=(1, 2, 3), keepdim=False)
        return (m[:, None] + torch.arange(2048, dtype=torch.float32),)


def _fake_torch_fidelity(monkeypatch, hub_dir):
    mod = types.ModuleType("torch_fidelity.feature_extractor_inceptionv3")
    mod.FeatureExtractorInceptionV3 = _FakeExtractor
    monkeypatch.setitem(sys.modules, "torch_fidelity", types.ModuleType("torch_fidelity"))
    monkeypatch.setitem(sys.modules, "torch_fidelity.feature_extractor_inceptionv3", mod)
    monkeypatch.setattr(torch.hub, "get_dir", lambda: str(hub_dir))
    _FakeExtractor.made = []


def test_inception_features_missing_weights_offline_raises_without_building(monkeypatch, tmp_path):
    _fake_torch_fidelity(monkeypatch, tmp_path)
    with pytest.raises(ConfigError) as e:
        ev.inception_features(torch.zeros(1, 3, 8, 8, dtype=torch.uint8), "cpu", allow_download=False)
    assert str(tmp_path / "checkpoints") in str(e.value) and _FakeExtractor.made == []


def test_inception_features_batches_and_returns_float64(monkeypatch, tmp_path):
    _fake_torch_fidelity(monkeypatch, tmp_path)
    w = tmp_path / "checkpoints" / ev.INCEPTION_WEIGHTS_FILE
    w.parent.mkdir()
    w.write_bytes(b"x")
    imgs = torch.arange(5, dtype=torch.uint8).view(5, 1, 1, 1).expand(5, 3, 4, 4).contiguous()
    f = ev.inception_features(imgs, "cpu", batch_size=2)
    assert _FakeExtractor.made == [str(w)]  # the cached file is passed explicitly: no network involved
    assert f.shape == (5, 2048) and f.dtype == torch.float64
    assert f[:, 0].tolist() == [0.0, 1.0, 2.0, 3.0, 4.0] and f[3, 7].item() == 10.0
    with pytest.raises(ValueError):
        ev.inception_features(imgs.float(), "cpu")
