"""SAELens-format SAEs (JumpReLU as in Gemma Scope, standard ReLU, TopK), made and saved by
SAELens itself, loaded through `load_sae` and used by the monitor on the zoo."""

from __future__ import annotations

import math

import pytest
import torch

from featuredrift import sae_store  # noqa: F401  (Triton guard)
from featuredrift.sae_store.load import load_sae
from featuredrift.sae_store.validate import SaeError

sae_lens = pytest.importorskip("sae_lens", reason="SAELens (featuredrift[saelens]) is not installed")


def make_saelens_sae(folder, architecture: str, d_in: int, layer: int, d_sae: int = 256, hook: str | None = None,
                     neuronpedia_id: str | None = None):
    """A small SAELens SAE whose decoder is a scaled copy of its encoder, so it reconstructs
    (with `neuronpedia_id` in its metadata, as SAELens releases that Neuronpedia hosts carry)."""
    from sae_lens import (
        JumpReLUSAE,
        JumpReLUSAEConfig,
        StandardSAE,
        StandardSAEConfig,
        TopKSAE,
        TopKSAEConfig,
    )
    from sae_lens.saes.sae import SAEMetadata

    metadata = SAEMetadata(hook_name=hook or f"blocks.{layer}.hook_resid_post",
                           **({"neuronpedia_id": neuronpedia_id} if neuronpedia_id else {}))
    classes = {
        "jumprelu": (JumpReLUSAE, JumpReLUSAEConfig, {}),
        "standard": (StandardSAE, StandardSAEConfig, {}),
        "topk": (TopKSAE, TopKSAEConfig, {"k": 16}),
    }
    sae_class, config_class, extra = classes[architecture]
    torch.manual_seed(layer)
    sae = sae_class(config_class(d_in=d_in, d_sae=d_sae, metadata=metadata, **extra))
    with torch.no_grad():
        encoder = torch.randn(d_in, d_sae) / d_in**0.5
        sae.W_enc.copy_(encoder)
        sae.W_dec.copy_(encoder.T / d_sae**0.5)
        sae.b_enc.zero_()
        if architecture == "jumprelu":
            sae.threshold.fill_(0.05)
    sae.save_model(str(folder))
    return folder


def _hidden_and_layer(zoo):
    from featuredrift.zoo.config import get_zoo_config

    config = get_zoo_config("nano")
    return config.hidden_size, int(zoo.hookpoint.split(".")[1])


@pytest.mark.parametrize("architecture", ["jumprelu", "standard", "topk"])
def test_saelens_sae_drives_every_metric(architecture, zoo_nano, zoo_nano_models, tmp_path):
    from featuredrift.monitor.config import MonitorConfig
    from featuredrift.monitor.drift_monitor import DriftMonitor

    base, chat, tokenizer = zoo_nano_models
    d_in, layer = _hidden_and_layer(zoo_nano)
    folder = make_saelens_sae(tmp_path / architecture, architecture, d_in, layer)
    sae = load_sae(str(folder), model=base)
    assert (sae.d_in, sae.num_latents) == (d_in, 256)
    monitor = DriftMonitor(MonitorConfig(sae=str(folder), probes=str(zoo_nano.probes), max_probes=8,
                                         refusal_score_every=0, refusal_k=8))
    monitor.start(base, tokenizer)
    assert monitor.hookpoints == [zoo_nano.hookpoint]
    layer_report = monitor.evaluate(chat, 1).layers[zoo_nano.hookpoint]
    for value in (layer_report.fvu["reference/base"], layer_report.fvu["current/chat"], layer_report.intersection_ratio_all,
                  layer_report.refusal_direction_cosine):
        assert math.isfinite(value)
    assert 0.0 <= layer_report.intersection_ratio_all <= 1.0
    assert layer_report.drifted_features, "feature statistics found no drifted feature"
    # Variable L0: padded slots are zeros and never count as active features.
    codes = sae.encode(torch.randn(32, d_in))
    if architecture != "topk":
        assert bool((codes[0] == 0).any()) or codes[0].shape[1] == 1
    assert int((codes[0] != 0).sum(dim=1).max()) <= codes[0].shape[1]


def test_saelens_errors_name_file_expected_and_found(zoo_nano, zoo_nano_models, tmp_path):
    base, _, _ = zoo_nano_models
    d_in, layer = _hidden_and_layer(zoo_nano)
    wide = make_saelens_sae(tmp_path / "wide", "topk", d_in * 2, layer)
    with pytest.raises(SaeError, match=rf"expected d_in = model hidden size {d_in}, found d_in = {2 * d_in}"):
        load_sae(str(wide), model=base)
    elsewhere = make_saelens_sae(tmp_path / "elsewhere", "topk", d_in, layer)
    with pytest.raises(SaeError, match=rf"expected hookpoints \['layers.{layer + 1}'\], found \['layers.{layer}'\]"):
        load_sae(str(elsewhere), model=base, hookpoint=f"layers.{layer + 1}")
    attention = make_saelens_sae(tmp_path / "attn", "topk", d_in, layer, hook=f"blocks.{layer}.attn.hook_z")
    with pytest.raises(SaeError, match=r"expected an SAE of the residual stream .* found hook 'blocks"):
        load_sae(str(attention), model=base)


def test_saelens_release_ids_are_checked_offline_and_fetched_once(zoo_nano, zoo_nano_models, tmp_path, monkeypatch):
    """`saelens:<release>/<sae id>`: names checked against SAELens's own directory with no network,
    a clear error when the Hub cannot be reached, and the local copy loaded once it exists."""
    import huggingface_hub.constants

    monkeypatch.setenv("FEATUREDRIFT_HOME", str(tmp_path / "home"))
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_OFFLINE", True)
    release = "gemma-scope-2b-pt-res-canonical"
    with pytest.raises(SaeError, match=f"found no release 'gemma-scope-2b-pt-res-canonicl'; nearest: {release}"):
        load_sae("saelens:gemma-scope-2b-pt-res-canonicl/layer_2/width_16k/canonical")
    with pytest.raises(SaeError, match=r"has no SAE .layer_2/width_99k. \(\d+ SAEs; e.g. .*layer_2/width_16k/canonical"):
        load_sae(f"saelens:{release}/layer_2/width_99k")
    with pytest.raises(SaeError, match="expected saelens:<release>/<sae id>"):
        load_sae(f"saelens:{release}")
    with pytest.raises(SaeError, match="could not fetch it from the Hugging Face Hub .* needs network access once"):
        load_sae(f"saelens:{release}/layer_2/width_16k/canonical")

    # Online: SAELens fetches it once (stood in for by a local SAE), it is saved, and reused.
    base, _, _ = zoo_nano_models
    d_in, layer = _hidden_and_layer(zoo_nano)
    made = sae_lens.SAE.load_from_disk(str(make_saelens_sae(tmp_path / "made", "jumprelu", d_in, layer)))
    fetches = []
    monkeypatch.setattr(sae_lens.SAE, "from_pretrained", lambda *args, **kwargs: fetches.append(args) or made)
    for _ in range(2):
        sae = load_sae(f"saelens:{release}/layer_2/width_16k/canonical", model=base)
        assert (sae.d_in, sae.num_latents, sae.architecture) == (d_in, 256, "JumpReLUSAE")
    assert fetches == [(release, "layer_2/width_16k/canonical")]
    assert (tmp_path / "home" / "saelens" / release / "layer_2" / "width_16k" / "canonical" / "cfg.json").is_file()


def test_variable_l0_codes_of_many_chunks_stack_with_zero_padding(zoo_nano, tmp_path):
    """A JumpReLU SAE fires a different number of features per chunk: encoding in several chunks
    pads the narrower ones with inactive (zero) slots, and nothing active is lost."""
    from featuredrift.monitor.metrics import encode_batched

    d_in, layer = _hidden_and_layer(zoo_nano)
    sae = load_sae(str(make_saelens_sae(tmp_path / "jumprelu", "jumprelu", d_in, layer)))
    x = torch.randn(64, d_in) * torch.linspace(0.2, 3.0, 64)[:, None]  # chunks with very different L0
    whole, chunked = encode_batched(sae, x, batch_size=64), encode_batched(sae, x, batch_size=7)
    assert torch.allclose(whole.reconstruction, chunked.reconstruction, atol=1e-5)
    dense = [torch.zeros(64, sae.num_latents).scatter_add_(1, c.top_indices, c.top_acts) for c in (whole, chunked)]
    assert torch.allclose(dense[0], dense[1], atol=1e-6)


def test_a_neuronpedia_hosted_sae_names_its_id_with_the_run(zoo_nano, zoo_nano_models, tmp_path):
    """SAELens keeps a release's Neuronpedia id in the SAE's metadata: the run records it, so the
    report's feature cards link to each feature's Neuronpedia page; an SAE without one links nowhere."""
    from featuredrift.monitor.config import MonitorConfig
    from featuredrift.monitor.drift_monitor import DriftMonitor

    base, _, tokenizer = zoo_nano_models
    d_in, layer = _hidden_and_layer(zoo_nano)
    hosted = make_saelens_sae(tmp_path / "hosted", "jumprelu", d_in, layer, neuronpedia_id="gemma-2-2b/12-gemmascope-res-16k")
    plain = make_saelens_sae(tmp_path / "plain", "jumprelu", d_in, layer)
    ids = []
    for folder in (hosted, plain):
        monitor = DriftMonitor(MonitorConfig(sae=str(folder), probes=str(zoo_nano.probes), max_probes=4,
                                             refusal_score_every=0, kl_every=0, refusal_k=4))
        monitor.start(base, tokenizer)
        ids.append(monitor.provenance()["neuronpedia_ids"])
    assert ids == [{zoo_nano.hookpoint: "gemma-2-2b/12-gemmascope-res-16k"}, {}]


@pytest.mark.parametrize("architecture", ["jumprelu", "standard", "topk"])
def test_sae_inspect_reads_a_folder_saved_by_saelens(architecture, tmp_path):
    """`featuredrift sae inspect` on a SAELens folder (cfg.json + sae_weights.safetensors) reports
    what the monitor loads: sizes, architecture, its own sha256 and decoder norms."""
    import hashlib
    import json

    from typer.testing import CliRunner

    from featuredrift.cli.main import app

    folder = make_saelens_sae(tmp_path / architecture, architecture, d_in=64, layer=2, d_sae=128)
    result = CliRunner().invoke(app, ["sae", "inspect", str(folder), "--json"])
    assert result.exit_code == 0, result.output
    (summary,) = json.loads(result.stdout)
    sae = load_sae(str(folder))
    norms = sae.W_dec.float().norm(dim=1)
    expected_sha = hashlib.sha256((folder / "cfg.json").read_bytes() + (folder / "sae_weights.safetensors").read_bytes())
    assert summary["hookpoint"] == "layers.2" and (summary["d_in"], summary["num_latents"]) == (64, 128)
    assert summary["activation"] == architecture and summary["k"] == (16 if architecture == "topk" else None)
    assert summary["fingerprint"] == expected_sha.hexdigest()
    assert summary["decoder_norm_max"] == pytest.approx(float(norms.max()))
    assert summary["num_parameters"] == sum(p.numel() for p in sae.parameters())
    table = CliRunner().invoke(app, ["sae", "inspect", str(folder)], env={"COLUMNS": "200"})
    assert table.exit_code == 0 and architecture in table.output and "128" in table.output
