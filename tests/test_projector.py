import pytest
import torch
from torch import nn

from hf_projkd.projector import BatchFeatureNorm, build_feature_norm, build_projector, projector_weight


def test_linear_projector_has_bias_and_default_init_shape():
    projector = build_projector("linear", 8, 16)
    assert isinstance(projector, nn.Linear) and projector.bias is not None
    assert projector(torch.randn(3, 8)).shape == (3, 16)


def test_orthogonal_projector_keeps_semi_orthogonal_weights():
    projector = build_projector("orthogonal", 8, 16)
    w = projector_weight(projector)  # (16, 8): orthonormal columns
    torch.testing.assert_close(w.T @ w, torch.eye(8), atol=1e-5, rtol=0)
    assert projector.bias is None


def test_mlp_projector_shape_and_unknown_name():
    assert build_projector("mlp", 8, 16)(torch.randn(3, 8)).shape == (3, 16)
    with pytest.raises(ValueError, match="expected one of"):
        build_projector("conv", 8, 16)


def test_batchnorm_always_uses_batch_statistics_even_in_eval():
    norm = BatchFeatureNorm(4)
    x = torch.randn(32, 4) * 5 + 3
    for mode in (norm.train, norm.eval):
        mode()
        y = norm(x)
        torch.testing.assert_close(y.mean(0), torch.zeros(4), atol=1e-5, rtol=0)
        torch.testing.assert_close(y.var(0, unbiased=False), torch.ones(4), atol=1e-3, rtol=0)
    assert not any(p.requires_grad for p in norm.parameters())  # affine=False


def test_batchnorm_tracks_running_stats_only_in_train_mode():
    norm = BatchFeatureNorm(4)
    x = torch.randn(16, 4) + 2
    norm.eval()
    norm(x)
    assert torch.equal(norm.running_mean, torch.zeros(4))
    norm.train()
    norm(x)
    torch.testing.assert_close(norm.running_mean, 0.1 * x.mean(0))
    assert norm.num_batches_tracked.item() == 1


def test_batchnorm_matches_torch_batchnorm1d_without_affine():
    reference = nn.BatchNorm1d(6, affine=False, eps=1e-4).train()
    x = torch.randn(10, 6)
    torch.testing.assert_close(BatchFeatureNorm(6)(x), reference(x))


def test_batchnorm_rejects_batch_of_one():
    with pytest.raises(ValueError, match="at least 2 samples"):
        BatchFeatureNorm(4)(torch.randn(1, 4))


def test_layernorm_and_l2_and_none():
    x = torch.randn(5, 6) * 3 + 1
    ln = build_feature_norm("layernorm", 6)(x)
    torch.testing.assert_close(ln.mean(-1), torch.zeros(5), atol=1e-5, rtol=0)
    l2 = build_feature_norm("l2", 6)(x)
    torch.testing.assert_close(l2.norm(dim=-1), torch.ones(5))
    assert torch.equal(build_feature_norm("none", 6)(x), x)
    with pytest.raises(ValueError, match="expected one of"):
        build_feature_norm("group", 6)
