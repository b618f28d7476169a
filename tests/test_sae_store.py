"""Loading, validating, fingerprinting and training sparsify SAEs, on real SparseCoders."""

from __future__ import annotations

import hashlib
import json
import struct

import pytest
import torch
from test_capture import CORPUS, build_model, build_tokenizer
from typer.testing import CliRunner

from featuredrift import sae_store  # noqa: F401  (Triton guard first)
from featuredrift.sae_store.load import load_sae, load_saes, locate_sae_dirs
from featuredrift.sae_store.registry import SaeRegistry, fingerprint_sae
from featuredrift.sae_store.train import PAPER_PRESET, pack_token_chunks, train_sae
from featuredrift.sae_store.validate import SaeError

D_IN = 32  # the tiny models' hidden size


def make_sae(path, *, d_in=D_IN, num_latents=64, k=4, seed=0, dtype=torch.float32):
    from sparsify import SparseCoder, SparseCoderConfig  # after sae_store's Triton guard

    torch.manual_seed(seed)
    sae = SparseCoder(d_in, SparseCoderConfig(num_latents=num_latents, k=k), dtype=dtype)
    sae.save_to_disk(path)
    return sae


@pytest.fixture(scope="module")
def tokenizer():
    return build_tokenizer()


@pytest.fixture(scope="module")
def llama(tokenizer):
    return build_model("llama", len(tokenizer))


# --- loading ------------------------------------------------------------------------------


def test_load_single_directory_frozen_on_requested_dtype(tmp_path, llama):
    original = make_sae(tmp_path / "layers.1")
    sae = load_sae(tmp_path / "layers.1", model=llama, hookpoint="layers.1", dtype=torch.bfloat16)
    from sparsify import SparseCoder

    assert isinstance(sae, SparseCoder) and not sae.training
    assert all(not p.requires_grad for p in sae.parameters())
    assert sae.dtype == torch.bfloat16 and sae.device.type == "cpu"
    torch.testing.assert_close(sae.W_dec.float(), original.W_dec.detach().to(torch.bfloat16).float())
    codes = sae.encode(torch.randn(5, D_IN, dtype=torch.bfloat16))
    assert codes.top_indices.shape == (5, 4)


def test_load_directory_of_hookpoints(tmp_path):
    for layer in (10, 2, 0):
        make_sae(tmp_path / f"layers.{layer}", seed=layer)
    (tmp_path / "notes.txt").write_text("not an SAE")
    assert list(locate_sae_dirs(tmp_path)) == ["layers.0", "layers.2", "layers.10"]
    saes = load_saes(tmp_path, ["layers.10", "layers.2"])
    assert list(saes) == ["layers.10", "layers.2"]
    assert not torch.equal(saes["layers.10"].W_dec, saes["layers.2"].W_dec)
    assert load_sae(tmp_path, hookpoint="layers.0").num_latents == 64
    assert load_sae(tmp_path / "layers.2", hookpoint="layers.2").num_latents == 64
    with pytest.raises(SaeError, match=r"expected hookpoints \['layers.3'\], found \['layers.2'\]"):
        load_sae(tmp_path / "layers.2", hookpoint="layers.3")  # a folder named after another layer
    with pytest.raises(SaeError, match=r"several hookpoints \['layers.0', 'layers.2', 'layers.10'\]"):
        load_sae(tmp_path)
    with pytest.raises(SaeError, match=r"expected hookpoints \['layers.5'\], found \['layers.0', 'layers.2', 'layers.10'\]"):
        load_saes(tmp_path, ["layers.5"])


def test_sae_must_fit_the_model(tmp_path, llama):
    make_sae(tmp_path / "narrow", d_in=16)
    with pytest.raises(SaeError, match=r"d_in: expected the hidden size of LlamaForCausalLM \(32\), found 16") as err:
        load_sae(tmp_path / "narrow", model=llama, hookpoint="layers.1")
    assert "narrow/cfg.json" in str(err.value)
    make_sae(tmp_path / "fits")
    with pytest.raises(SaeError, match=r"'layers.9' does not exist .* expected layers.0 … layers.2") as err:
        load_sae(tmp_path / "fits", model=llama, hookpoint="layers.9")
    assert err.value.__cause__ is not None  # the HookpointError is chained


def _corrupt(path, how):
    weights = path / "sae.safetensors"
    data = weights.read_bytes()
    if how == "truncated":
        weights.write_bytes(data[:-10])
    elif how == "header_length":
        weights.write_bytes(struct.pack("<Q", 10**12) + data[8:])
    elif how == "header_json":
        (length,) = struct.unpack("<Q", data[:8])
        weights.write_bytes(data[:8] + b"{" * length + data[8 + length :])
    elif how == "tiny":
        weights.write_bytes(b"abc")


@pytest.mark.parametrize(
    ("setup", "message"),
    [
        (lambda p: (p / "cfg.json").unlink(), r"cfg.json: missing SAE config"),
        (lambda p: (p / "sae.safetensors").unlink(), r"sae.safetensors: missing SAE weights"),
        (lambda p: (p / "cfg.json").write_text("{not json"), r"cfg.json: unreadable SAE config: expected valid JSON"),
        (lambda p: (p / "cfg.json").write_text("[1, 2]"), r"cfg.json: expected a JSON object, found list"),
        (lambda p: (p / "cfg.json").write_text('{"k": 4, "num_latents": 64}'), r"field 'd_in': expected a positive integer, found missing"),
        (lambda p: (p / "cfg.json").write_text('{"d_in": 32, "k": 100, "num_latents": 64}'), r"field 'k': expected at most num_latents=64, found 100"),
        (lambda p: (p / "cfg.json").write_text('{"d_in": 32, "k": 4, "num_latents": 64, "activation": "relu"}'), r"field 'activation'"),
        (lambda p: _corrupt(p, "truncated"), r"truncated or padded safetensors file: header describes \d+ bytes, file has \d+"),
        (lambda p: _corrupt(p, "header_length"), r"corrupt safetensors header: header length"),
        (lambda p: _corrupt(p, "header_json"), r"corrupt safetensors header: expected JSON"),
        (lambda p: _corrupt(p, "tiny"), r"truncated safetensors file: expected at least 8 bytes, found 3"),
        (lambda p: (p / "cfg.json").write_text('{"d_in": 16, "k": 4, "num_latents": 64}'), r"tensor 'encoder.weight': expected shape \[64, 16\] .* found \[64, 32\]"),
        (lambda p: (p / "cfg.json").write_text('{"d_in": 32, "k": 4, "num_latents": 64, "skip_connection": true}'), r"missing \['W_skip'\]"),
    ],
)
def test_invalid_sae_directories_raise_one_clear_error(tmp_path, setup, message):
    path = tmp_path / "layers.0"
    make_sae(path)
    setup(path)
    with pytest.raises(SaeError, match=message) as err:
        load_sae(path)
    assert str(path) in str(err.value)
    assert isinstance(err.value, ValueError)


def test_non_finite_weights_are_rejected(tmp_path):
    sae = make_sae(tmp_path / "layers.0")
    with torch.no_grad():
        sae.W_dec[3, 5] = float("nan")
        sae.encoder.bias[0] = float("inf")
    sae.save_to_disk(tmp_path / "layers.0")
    with pytest.raises(SaeError, match=r"sae.safetensors: tensor '.*': expected finite weights, found 1 NaN/inf"):
        load_sae(tmp_path / "layers.0")


def test_unknown_sources_and_offline_hub(tmp_path, monkeypatch):
    with pytest.raises(SaeError, match="no such path exists"):
        load_sae(str(tmp_path / "nowhere" / "sae"))
    with pytest.raises(SaeError, match="found a file"):
        (tmp_path / "file").write_text("x")
        load_sae(str(tmp_path / "file"))
    with pytest.raises(SaeError, match=r"found \['empty.txt'\]"):
        (tmp_path / "dir").mkdir()
        (tmp_path / "dir" / "empty.txt").write_text("")
        load_sae(tmp_path / "dir")
    import huggingface_hub.constants

    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_OFFLINE", True)
    monkeypatch.chdir(tmp_path)
    with pytest.raises(SaeError, match=r"'featuredrift-test/no-such-sae': no such local path, and downloading it from the Hugging Face Hub failed"):
        load_sae("featuredrift-test/no-such-sae", hookpoint="layers.3")


# --- registry and fingerprints ------------------------------------------------------------


def test_fingerprint_is_sha256_of_config_then_weights(tmp_path):
    make_sae(tmp_path / "a")
    expected = hashlib.sha256((tmp_path / "a" / "cfg.json").read_bytes() + (tmp_path / "a" / "sae.safetensors").read_bytes())
    assert fingerprint_sae(tmp_path / "a") == expected.hexdigest()
    make_sae(tmp_path / "b", seed=1)
    assert fingerprint_sae(tmp_path / "b") != fingerprint_sae(tmp_path / "a")


def test_registry_register_lookup_and_verify(tmp_path, monkeypatch):
    monkeypatch.setenv("FEATUREDRIFT_HOME", str(tmp_path / "home"))
    make_sae(tmp_path / "sae" / "layers.1")
    make_sae(tmp_path / "sae2" / "layers.1", seed=3)
    registry = SaeRegistry()
    assert registry.file == tmp_path / "home" / "sae_registry.json"
    assert registry.lookup("org/model", "layers.1") is None
    first = registry.register("org/model", "layers.1", tmp_path / "sae" / "layers.1")
    registry.register("org/model", "layers.1", tmp_path / "sae2" / "layers.1", revision="v2")
    again = SaeRegistry()  # a fresh reader sees what was written
    assert again.lookup("org/model", "layers.1") == first
    assert again.lookup("org/model", "layers.1", revision="v2").fingerprint == fingerprint_sae(tmp_path / "sae2" / "layers.1")
    assert again.lookup("org/model", "layers.2") is None
    replaced = again.register("org/model", "layers.1", tmp_path / "sae2" / "layers.1")
    assert len(again.entries()) == 2 and again.lookup("org/model", "layers.1") == replaced
    assert again.lookup("org/model", "layers.1", verify=True) == replaced
    make_sae(tmp_path / "sae2" / "layers.1", seed=4)  # the files change under the registry
    with pytest.raises(SaeError, match="SAE changed since it was registered"):
        again.lookup("org/model", "layers.1", verify=True)
    registry.file.write_text("{broken")
    with pytest.raises(SaeError, match="corrupt SAE registry"):
        registry.entries()


def test_register_rejects_invalid_sae(tmp_path):
    (tmp_path / "bad").mkdir()
    with pytest.raises(SaeError, match="missing SAE config"):
        SaeRegistry(tmp_path / "home").register("m", "layers.0", tmp_path / "bad")


# --- training -----------------------------------------------------------------------------


def test_pack_token_chunks_and_paper_preset():
    chunks = pack_token_chunks([[1, 2, 3], [4, 5], [6, 7, 8, 9]], 4, separator_id=0)
    # Every chunk starts on the separator: position 0 (the attention sink) is a special token.
    assert chunks == [[0, 0, 1, 2], [0, 3, 0, 4], [0, 5, 0, 6], [0, 7, 8, 9]]
    assert pack_token_chunks([[1, 2, 3], [4, 5]], 3, separator_id=None, max_tokens=4) == [[1, 2, 3]]
    kwargs = PAPER_PRESET.train_kwargs(ctx_len=1024)
    assert kwargs["batch_size"] == 4 and kwargs["num_latents"] == 65_536 and kwargs["k"] == 100
    assert kwargs["auxk_alpha"] == 1 / 32 and kwargs["multi_topk"] and kwargs["lr"] == 1e-4


@pytest.mark.slow
def test_train_sae_reduces_fvu_and_writes_a_loadable_sae(tmp_path, tokenizer, llama):
    llama.train()
    flags = [p.requires_grad for p in llama.parameters()]
    result = train_sae(
        llama, tokenizer, CORPUS * 2, ["layers.1"], num_latents=64, k=4, out_dir=tmp_path / "out",
        ctx_len=32, batch_size=4, lr=3e-3, grad_clip=1.0, max_tokens=32 * 4 * 12,
    )
    assert result.num_steps == 12
    assert result.final_fvu["layers.1"] < 0.8 * result.initial_fvu["layers.1"]
    assert [p.requires_grad for p in llama.parameters()] == flags and llama.training
    llama.eval()
    files = sorted(p.relative_to(tmp_path / "out").as_posix() for p in (tmp_path / "out").rglob("*") if p.is_file())
    assert files == ["layers.1/cfg.json", "layers.1/featuredrift_training.json", "layers.1/sae.safetensors",
                     "training.json"]  # no pickled state
    sae = load_sae(tmp_path / "out", model=llama, hookpoint="layers.1")
    assert sae.num_latents == 64 and sae.cfg.k == 4
    record = json.loads((tmp_path / "out" / "training.json").read_text())
    assert record["final_fvu"]["layers.1"] == pytest.approx(result.final_fvu["layers.1"])
    assert set(record["exclude_tokens"]) >= set(tokenizer.all_special_ids)
    # A renamed SAE folder still knows its layer: using it at another layer is an error.
    (tmp_path / "out" / "layers.1").rename(tmp_path / "my-sae")
    assert load_sae(tmp_path / "my-sae", model=llama).num_latents == 64
    with pytest.raises(SaeError, match=r"trained at layers.1 \(from featuredrift_training.json\), but requested for layers.2"):
        load_sae(tmp_path / "my-sae", model=llama, hookpoint="layers.2")


def test_train_sae_rejects_bad_requests(tokenizer, llama, tmp_path):
    with pytest.raises(SaeError, match=r"training data: expected at least batch_size × ctx_len = 64 × 32 tokens"):
        train_sae(llama, tokenizer, CORPUS[:2], ["layers.1"], num_latents=64, k=4, out_dir=tmp_path, ctx_len=32, batch_size=64)
    with pytest.raises(SaeError, match="k: expected at most num_latents=8, found 9"):
        train_sae(llama, tokenizer, CORPUS, ["layers.1"], num_latents=8, k=9, out_dir=tmp_path)


# --- CLI ----------------------------------------------------------------------------------


def test_cli_inspect(tmp_path):
    from featuredrift.cli.main import app

    make_sae(tmp_path / "layers.0")
    make_sae(tmp_path / "layers.3", num_latents=128, k=8)
    runner = CliRunner()
    result = runner.invoke(app, ["sae", "inspect", str(tmp_path), "--json"])
    assert result.exit_code == 0, result.output
    rows = json.loads(result.stdout)
    assert [r["hookpoint"] for r in rows] == ["layers.0", "layers.3"]
    assert rows[1]["num_latents"] == 128 and rows[1]["k"] == 8 and rows[1]["d_in"] == D_IN
    assert rows[0]["fingerprint"] == fingerprint_sae(tmp_path / "layers.0")
    assert rows[0]["decoder_norm_max"] == pytest.approx(1.0, abs=1e-5)
    table = runner.invoke(app, ["sae", "inspect", str(tmp_path / "layers.3")])
    assert table.exit_code == 0 and "num_latents" in table.stdout and "128" in table.stdout
    missing = runner.invoke(app, ["sae", "inspect", str(tmp_path / "nope")])
    assert missing.exit_code == 2 and "no such path exists" in missing.output


@pytest.mark.slow
def test_cli_train(tmp_path, tokenizer, llama):
    from featuredrift.cli.main import app

    llama.save_pretrained(tmp_path / "model")
    tokenizer.save_pretrained(tmp_path / "model")
    (tmp_path / "data.txt").write_text("\n".join(CORPUS))
    result = CliRunner().invoke(app, [
        "sae", "train", "--model", str(tmp_path / "model"), "--data", str(tmp_path / "data.txt"),
        "--hookpoint", "layers.2", "--out", str(tmp_path / "sae"), "--num-latents", "64", "--k", "4",
        "--batch-size", "2", "--ctx-len", "32", "--max-tokens", "256", "--lr", "3e-3",
    ])
    assert result.exit_code == 0, result.output
    assert "layers.2: FVU" in result.stdout
    assert "warning: layers.2: only" in result.output and "training steps" in result.output  # 4 steps
    sae = load_sae(tmp_path / "sae", model=llama, hookpoint="layers.2")
    assert sae.num_latents == 64
    # The project's own chat SFT format is accepted: conversations are rendered with the template.
    assert tokenizer.chat_template
    chats = [{"messages": [{"role": "user", "content": t}, {"role": "assistant", "content": t[::-1]}]} for t in CORPUS]
    (tmp_path / "chat.jsonl").write_text("\n".join(json.dumps(c) for c in chats))
    chat_run = CliRunner().invoke(app, [
        "sae", "train", "--model", str(tmp_path / "model"), "--data", str(tmp_path / "chat.jsonl"),
        "--hookpoint", "layers.2", "--out", str(tmp_path / "chat-sae"), "--num-latents", "64", "--k", "4",
        "--batch-size", "2", "--ctx-len", "32", "--max-tokens", "256",
    ])
    assert chat_run.exit_code == 0, chat_run.output


# --- on the embedded zoo (runs once tests/conftest.py provides `zoo_nano`) -----------------


@pytest.mark.slow
def test_zoo_sae_loads_and_reconstructs_the_zoo_model(request):
    from test_capture import TEXTS, zoo_or_skip
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from featuredrift.lm.capture import collect_token_activations

    zoo = zoo_or_skip(request)
    base = AutoModelForCausalLM.from_pretrained(zoo.base).eval()
    tokenizer = AutoTokenizer.from_pretrained(zoo.base)
    sae = load_sae(zoo.sae, model=base, hookpoint=zoo.hookpoint)
    assert sae.d_in == base.config.hidden_size
    assert torch.equal(load_sae("zoo:nano", model=base).W_dec, sae.W_dec)
    acts = collect_token_activations(base, tokenizer, TEXTS, [zoo.hookpoint]).activations[zoo.hookpoint]
    with torch.no_grad():
        assert float(sae(acts).fvu) < 1.0
    narrow = build_model("llama", len(tokenizer))  # hidden size 32
    if narrow.config.hidden_size != base.config.hidden_size:
        with pytest.raises(SaeError, match="d_in"):
            load_sae(zoo.sae / zoo.hookpoint, model=narrow)
