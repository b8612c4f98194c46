import torch

from sae_pipeline.export import export, export_encode, load_export
from sae_pipeline.sae import SAE


def test_export_round_trip_on_raw_activations(tmp_path):
    g = torch.Generator().manual_seed(0)
    sae = SAE(12, 40, "jumprelu", generator=g)
    with torch.no_grad():
        sae.threshold.copy_(torch.rand(40, generator=g) * 0.5 + 0.1)
        sae.b_enc.normal_(generator=g)
        sae.b_dec.normal_(generator=g)
    shift, scale = torch.rand(12, generator=g) * 3, torch.rand(12, generator=g) + 0.5
    h = torch.relu(torch.randn(200, 12, generator=g) * 2 + 1)
    export(sae, shift, scale, tmp_path / "saelens", {"note": "test"}, "vit", "block2")
    cfg, w = load_export(tmp_path / "saelens")
    assert cfg["architecture"] == "jumprelu" and cfg["d_in"] == 12 and cfg["d_sae"] == 40
    assert cfg["metadata"]["model_name"] == "mnist-vit" and cfg["metadata"]["hook_name"] == "block2"
    assert cfg["apply_b_dec_to_input"] is False and cfg["normalize_activations"] == "none"
    assert set(w) == {"W_enc", "W_dec", "b_enc", "b_dec", "threshold"}
    assert w["W_enc"].shape == (12, 40) and w["W_dec"].shape == (40, 12)
    f_ref = sae.encode((h - shift) / scale).detach()
    f_exp = export_encode(cfg, w, h)
    assert torch.allclose(f_exp, f_ref, atol=1e-5)
    assert torch.equal(f_exp > 0, f_ref > 0) or ((f_exp > 0) != (f_ref > 0)).sum() <= 1
    h_hat_ref = sae.decode(f_ref).detach() * scale + shift
    assert torch.allclose(f_exp @ w["W_dec"] + w["b_dec"], h_hat_ref, atol=1e-4)
