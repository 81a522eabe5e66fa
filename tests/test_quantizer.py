import torch
import torch.nn.functional as F

from vqgen.quantizer import VectorQuantizer


def _q(kind="vq", k=8, d=4, **kw):
    torch.manual_seed(0)
    q = VectorQuantizer(k, d, kind=kind, **kw)
    q.initialized.fill_(True)  # keep the random codebook: these tests set it by hand
    return q


def test_nearest_code_matches_brute_force():
    q = _q(k=32, d=6)
    z = torch.randn(200, 6)
    brute = torch.cdist(z, q.embedding.detach()).argmin(1)
    assert torch.equal(q.nearest(z), brute)


def test_forward_replaces_each_vector_by_its_nearest_code():
    q = _q(k=16, d=3).eval()
    z = torch.randn(2, 3, 4, 4)
    out = q(z)
    flat = z.permute(0, 2, 3, 1).reshape(-1, 3)
    expect = q.embedding[torch.cdist(flat, q.embedding.detach()).argmin(1)]
    assert torch.allclose(out.z_q.permute(0, 2, 3, 1).reshape(-1, 3), expect, atol=1e-6)
    assert out.indices.shape == (2, 4, 4) and out.indices.dtype == torch.long


def test_straight_through_gradient_reaches_encoder_input():
    q = _q().eval()
    z = torch.randn(2, 4, 3, 3, requires_grad=True)
    out = q(z)
    w = torch.randn_like(out.z_q)
    (out.z_q * w).sum().backward()
    assert torch.allclose(z.grad, w)  # identity gradient through the quantiser


def test_rotation_gradient_keeps_codes_and_rotates_the_gradient():
    q = _q(gradient="rotation").eval()
    z = torch.randn(2, 4, 3, 3, requires_grad=True)
    out = q(z)
    assert torch.equal(out.z_q, q.lookup(out.indices))  # exactly the codes: only the gradient differs from ste
    w = torch.randn_like(out.z_q)
    (out.z_q * w).sum().backward()
    flat = lambda t: t.detach().permute(0, 2, 3, 1).reshape(-1, 4)
    zf, ef, gf, wf = flat(z), flat(out.z_q), flat(z.grad), flat(w)
    # the gradient is the decoder's, rotated by the map taking z to its code and scaled by |e|/|z|:
    # its norm scales, and its angle to z equals the decoder gradient's angle to the code
    assert torch.allclose(gf.norm(dim=1), wf.norm(dim=1) * ef.norm(dim=1) / zf.norm(dim=1), rtol=1e-4)
    assert torch.allclose(F.cosine_similarity(gf, zf), F.cosine_similarity(wf, ef), atol=1e-4)
    assert not torch.allclose(gf, wf, atol=1e-3)  # not the straight-through copy


def test_codebook_loss_moves_only_codebook_and_commitment_only_encoder():
    q = _q(kind="vq", beta=0.0).eval()  # beta=0: loss is the codebook term alone
    z = torch.randn(2, 4, 3, 3, requires_grad=True)
    q(z).loss.backward()
    assert z.grad is None or torch.all(z.grad == 0)
    assert q.embedding.grad.abs().sum() > 0

    q2 = _q(kind="vq").eval()
    z2 = torch.randn(2, 4, 3, 3, requires_grad=True)
    q2(z2).commitment.backward()
    assert z2.grad.abs().sum() > 0
    assert q2.embedding.grad is None or torch.all(q2.embedding.grad == 0)


def test_ema_update_matches_hand_computation():
    k, d, decay, eps = 3, 2, 0.9, 1e-5
    q = _q(kind="ema", k=k, d=d, decay=decay, eps=eps, restart_threshold=0.0)
    q.embedding.copy_(torch.tensor([[0.0, 0.0], [10.0, 10.0], [-10.0, 5.0]]))
    q.embed_sum.copy_(q.embedding)
    q.cluster_size.fill_(1.0)
    z = torch.tensor([[1.0, 0.0], [0.0, 1.0], [9.0, 11.0]])  # two vectors to code 0, one to code 1
    q.train()(z.t().reshape(1, d, 1, 3))
    counts = torch.tensor([2.0, 1.0, 0.0])
    sums = torch.tensor([[1.0, 1.0], [9.0, 11.0], [0.0, 0.0]])
    cs = decay * 1.0 + (1 - decay) * counts
    es = decay * torch.tensor([[0.0, 0.0], [10.0, 10.0], [-10.0, 5.0]]) + (1 - decay) * sums
    n = cs.sum()
    smoothed = (cs + eps) / (n + k * eps) * n
    assert torch.allclose(q.cluster_size, cs)
    assert torch.allclose(q.embed_sum, es)
    assert torch.allclose(q.embedding, es / smoothed[:, None], atol=1e-6)


def test_dead_codes_are_restarted_onto_encoder_outputs():
    q = _q(kind="ema", k=16, d=4, restart_threshold=0.5)
    q.embedding[1:] += 100.0  # codes 1.. are far from every input: only code 0 is ever picked
    q.embed_sum.copy_(q.embedding)
    z = torch.randn(4, 4, 4, 4)
    for _ in range(100):
        q.train()(z)
    used = q.eval()(z).indices.unique().numel()
    assert used > 4, f"only {used} codes in use after restarts"
    assert q.embedding.abs().max() < 50  # every far-away code was moved onto the data


def test_data_init_takes_codes_from_encoder_outputs():
    torch.manual_seed(0)
    q = VectorQuantizer(8, 3, kind="ema")
    z = torch.randn(1, 3, 4, 4) + 5.0
    q.train()(z)
    # a random codebook sits near 0; one initialised from these inputs sits among them, near 5
    assert bool(q.initialized)
    assert (q.embedding - 5.0).abs().max() < 4.0
    assert q.eval()(z).indices.unique().numel() >= 6  # nearly every code is some input's nearest


def test_quantizer_runs_in_fp32_under_autocast():
    q = _q(kind="ema").train()
    z = torch.randn(2, 4, 3, 3)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        out = q(z.bfloat16())
    assert out.z_q.dtype == torch.float32 and q.embedding.dtype == torch.float32
