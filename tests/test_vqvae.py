import json

import torch

from vqgen.train import TensorBatches
from vqgen.vqvae import VQVAE, VQVAEConfig, VQVAEObjective, load_vqvae, save_vqvae

def blocky_images(n, size, seed=0):
    """Images of a few flat-coloured 4x4 blocks: learnable structure, unlike pixel noise."""
    g = torch.Generator().manual_seed(seed)
    small = torch.randint(0, 256, (n, 3, size // 4, size // 4), generator=g).float()
    return torch.nn.functional.interpolate(small, scale_factor=4, mode="nearest").to(torch.uint8)


TINY = dict(hidden=16, res_blocks=1, res_channels=8, num_codes=16, code_dim=8)


def test_shapes_for_any_multiple_of_four():
    for size in (8, 16, 32):
        m = VQVAE(VQVAEConfig(image_size=size, **TINY)).eval()
        x = torch.rand(2, 3, size, size)
        x_hat, q = m(x)
        assert x_hat.shape == x.shape
        assert m.encode(x).shape == (2, size // 4, size // 4)
        assert m.decode(m.encode(x)).shape == x.shape


def test_loss_falls_on_tiny_fixed_set():
    torch.manual_seed(0)
    m = VQVAE(VQVAEConfig(image_size=16, **TINY))
    obj = VQVAEObjective(m)
    x = blocky_images(16, 16)
    opt = torch.optim.Adam(m.parameters(), 3e-3)
    losses = []
    for _ in range(100):
        loss, _ = obj(x)
        opt.zero_grad()
        loss.backward()
        opt.step()
        losses.append(loss.item())
    assert sum(losses[-5:]) / 5 < 0.75 * sum(losses[:5]) / 5


def test_weights_round_trip_restores_identical_outputs(tmp_path):
    torch.manual_seed(0)
    m = VQVAE(VQVAEConfig(image_size=16, **TINY))
    m.train()(torch.rand(4, 3, 16, 16))  # initialise the codebook from data
    m.eval()
    save_vqvae(m, tmp_path / "v.safetensors")
    m2, sha = load_vqvae(tmp_path / "v.safetensors")
    x = torch.rand(3, 3, 16, 16)
    assert torch.equal(m.encode(x), m2.encode(x))
    assert torch.equal(m.decode(m.encode(x)), m2.decode(m2.encode(x)))
    assert len(sha) == 64 and m2.config == m.config


def test_files_name_the_codebook_size_num_codes_and_older_files_still_load(tmp_path):
    """The codebook size is num_codes everywhere; files written before the rename call it codebook_size."""
    from vqgen.checkpoint import read_header

    save_vqvae(VQVAE(VQVAEConfig(image_size=16, **TINY)), tmp_path / "new.safetensors")
    assert json.loads(read_header(tmp_path / "new.safetensors")[1]["config"])["num_codes"] == 16
    old = {k if k != "num_codes" else "codebook_size": v for k, v in VQVAEConfig(**TINY).to_dict().items()}
    assert VQVAEConfig(**VQVAEConfig.upgrade(old)) == VQVAEConfig(**TINY)


def test_batches_are_seeded_resumable_slices():
    x = torch.arange(10)
    a = TensorBatches((x,), 4, seed=3)
    seen = [next(a)[0] for _ in range(5)]
    b = TensorBatches((x,), 4, seed=3)
    for _ in range(2):
        next(b)
    c = TensorBatches((x,), 4, seed=3)
    c.load_state_dict(b.state_dict())
    assert all(torch.equal(s, next(c)[0]) for s in seen[2:])
    assert sorted(torch.cat(seen[:2]).tolist()) == sorted(set(torch.cat(seen[:2]).tolist()))  # no repeats in an epoch


def test_shift_images_translates_each_image_by_its_own_offset():
    import torch.nn.functional as F

    from vqgen.vqvae import shift_images

    x = torch.rand(3, 3, 8, 8)
    offsets = torch.tensor([[2, 2], [0, 4], [3, 1]])  # (dy, dx); 2 = pad = no move
    out = shift_images(x, 2, offsets)
    padded = F.pad(x, (2, 2, 2, 2), mode="reflect")
    assert torch.equal(out[0], x[0])
    for i, (dy, dx) in enumerate(offsets.tolist()):
        assert torch.equal(out[i], padded[i, :, dy : dy + 8, dx : dx + 8])
    assert torch.equal(out[1, :, 2:, :6], x[1, :, :6, 2:])  # down 2, left 2: the image content moved, not resampled


def test_objective_shift_augments_only_when_asked():
    from types import SimpleNamespace

    class Recorder(torch.nn.Module):  # stands in for the VQ-VAE: returns its input, keeps what it was given
        def __init__(self):
            super().__init__()
            self.seen = []

        def forward(self, x):
            self.seen.append(x)
            zero = x.sum() * 0
            return x, SimpleNamespace(loss=zero, commitment=zero, counts=None)

    rec = Recorder()
    images = torch.randint(0, 256, (4, 3, 16, 16), dtype=torch.uint8)
    VQVAEObjective(rec)(images)
    VQVAEObjective(rec, shift=3)(images)
    assert torch.equal(rec.seen[0], images.float() / 255) and not torch.equal(rec.seen[1], rec.seen[0])
