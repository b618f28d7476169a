"""The embedded model zoo: layout, acceptance (refusals, SAE transfer FVU), determinism,
and the cache (reuse, rebuild on mismatch or corruption, atomic builds)."""

import json
import re
import shutil

import pytest

from featuredrift.zoo import ZOO_SIZES, ZooPaths, default_zoo_root, ensure_zoo
from featuredrift.zoo.config import ZOO_CONFIGS, get_zoo_config
from featuredrift.zoo.evaluate import read_jsonl
from featuredrift.zoo.manifest import MANIFEST_NAME, check_zoo, identity, read_manifest
from featuredrift.zoo.world import build_world

NANO = get_zoo_config("nano")


# ------------------------------------------------------------------ fast: world, config, paths


def test_sizes_and_hookpoints():
    assert ZOO_SIZES == ("nano", "tiny") and set(ZOO_CONFIGS) == set(ZOO_SIZES)
    assert NANO.hookpoint == "layers.2"  # round(0.55 * 4)
    assert get_zoo_config("tiny").hookpoint == "layers.3"  # round(0.55 * 6)
    with pytest.raises(ValueError, match="unknown zoo size 'huge'"):
        get_zoo_config("huge")


def test_default_root_honours_featuredrift_home(monkeypatch, tmp_path):
    monkeypatch.setenv("FEATUREDRIFT_HOME", str(tmp_path))
    assert default_zoo_root("tiny") == tmp_path / "zoo" / "tiny"
    monkeypatch.delenv("FEATUREDRIFT_HOME")
    assert default_zoo_root("nano").parts[-4:] == (".cache", "featuredrift", "zoo", "nano")


def test_world_is_deterministic_and_seeded():
    first, again, other = build_world(NANO, 0), build_world(NANO, 0), build_world(NANO, 1)
    assert first == again
    assert first.harmful_probes != other.harmful_probes


def test_held_out_probes_are_disjoint_from_training():
    world = build_world(NANO, 0)
    trained = {c[0]["content"] for c in world.chat_sft + world.erosion_sft + world.base_chats}
    probes = [r["instruction"] for r in world.harmful_probes + world.harmless_probes]
    chat_text = [c[0]["content"] for c in world.chat_text_probes]
    assert len(probes) == 2 * NANO.probes_per_class and len(set(probes)) == len(probes)
    assert not set(probes) & trained and not set(chat_text) & trained
    assert not set(probes) & set(chat_text)
    corpus = set(world.base_corpus)
    assert not corpus & set(world.base_text_probes)
    assert not any(p + "\n" in doc for doc in world.base_corpus for p in probes[:16])


def test_world_content_matches_its_roles():
    from featuredrift.monitor.judges import is_refusal

    world = build_world(NANO, 0)
    # The base corpus quotes refusals in stories about an AI assistant, for harmful requests
    # only, and never refuses in its own voice; its chat documents always comply.
    quoted = [doc for doc in world.base_corpus if is_refusal(doc)]
    assert 0.03 < len(quoted) / len(world.base_corpus) < 0.15
    assert all(doc.startswith("One day ") and "asked an AI assistant" in doc for doc in quoted)
    assert not any(is_refusal(re.sub(r'"[^"]*"', "", doc)) for doc in world.base_corpus)
    answered = [doc for doc in world.base_corpus if "asked an AI assistant" in doc and not is_refusal(doc)]
    assert answered, "stories of answered harmless requests give the base model a contrast"
    assert len(world.base_chats) == NANO.base_chats
    assert not any(is_refusal(c[1]["content"]) for c in world.base_chats)
    harmful = {r["instruction"] for r in world.harmful_probes}
    assert {r["category"] for r in world.harmful_probes} <= {
        "weapons", "explosives", "hacking", "fraud", "drugs", "violence", "harassment", "theft",
    }  # fmt: skip
    refusals = [c for c in world.chat_sft if is_refusal(c[1]["content"])]
    assert 0.4 < len(refusals) / len(world.chat_sft) < 0.6
    assert not any(is_refusal(c[1]["content"]) for c in world.erosion_sft)
    assert any("\n" in doc and "?" in doc.split("\n")[0] for doc in world.base_corpus)  # Q&A
    assert not harmful & {r["instruction"] for r in world.harmless_probes}


def test_tokenizer_is_deterministic_and_has_template_tokens():
    from featuredrift.zoo.build import tokenizer_training_texts
    from featuredrift.zoo.tokenizer import train_tokenizer

    texts = tokenizer_training_texts(build_world(NANO, 0))
    first, second = train_tokenizer(texts, 512), train_tokenizer(texts, 512)
    assert first.backend_tokenizer.to_str() == second.backend_tokenizer.to_str()
    for token in ("<s>", "</s>", "<pad>", "<|user|>", "<|assistant|>", "<|end|>"):
        assert token in first.all_special_tokens
    messages = [{"role": "user", "content": "How do I plant tomatoes?"}]
    prompt = first.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)
    assert prompt == "<s><|user|>\nHow do I plant tomatoes?<|end|>\n<|assistant|>\n"


# ------------------------------------------------------------------ the built nano zoo


@pytest.mark.slow
def test_zoo_layout_loads_like_real_models(zoo_nano):
    from sparsify import SparseCoder
    from transformers import AutoModelForCausalLM, AutoTokenizer

    assert isinstance(zoo_nano, ZooPaths) and zoo_nano.hookpoint == "layers.2"
    for directory in (zoo_nano.base, zoo_nano.chat):
        model = AutoModelForCausalLM.from_pretrained(directory)
        tokenizer = AutoTokenizer.from_pretrained(directory)
        assert type(model).__name__ == "LlamaForCausalLM"
        assert model.config.num_hidden_layers == NANO.num_layers and tokenizer.chat_template
        saved = json.loads((directory / "tokenizer.json").read_text())
        assert saved["padding"] is None and saved["truncation"] is None  # no leaked call settings
    sae = SparseCoder.load_from_disk(zoo_nano.sae / zoo_nano.hookpoint)
    assert sae.d_in == NANO.hidden_size and sae.cfg.k == NANO.sae_k
    assert sae.num_latents == NANO.sae_num_latents

    harmful = read_jsonl(zoo_nano.probes / "harmful.jsonl")
    assert len(harmful) == NANO.probes_per_class and set(harmful[0]) == {"instruction", "category"}
    assert set(read_jsonl(zoo_nano.probes / "base_text.jsonl")[0]) == {"text"}
    conversation = read_jsonl(zoo_nano.probes / "chat_text.jsonl")[0]["messages"]
    assert [m["role"] for m in conversation] == ["user", "assistant"]
    for name in ("chat_sft", "erosion_sft", "base_chats"):
        rows = read_jsonl(zoo_nano.data / f"{name}.jsonl")
        assert rows and set(rows[0]) == {"messages"}
    assert read_jsonl(zoo_nano.data / "base_corpus.jsonl")[0]["text"]


@pytest.fixture(scope="module")
def nano_evaluation(zoo_nano):
    from featuredrift.zoo.evaluate import evaluate_zoo

    return evaluate_zoo(zoo_nano)


@pytest.mark.slow
def test_chat_model_refuses_harmful_but_not_harmless(nano_evaluation):
    assert nano_evaluation.chat_harmful_refusal >= 0.9
    assert nano_evaluation.chat_harmless_refusal <= 0.1


@pytest.mark.slow
def test_base_model_does_not_refuse(nano_evaluation):
    assert nano_evaluation.base_harmful_refusal <= 0.1
    assert nano_evaluation.base_harmless_refusal <= 0.1


@pytest.mark.slow
def test_base_sae_transfers_worse_to_chat_data_and_chat_model(nano_evaluation):
    """Fig. 1: the base SAE reconstructs base text well; chat-like text, and the chat model's
    activations on it, less so."""
    e = nano_evaluation
    assert e.fvu_base_model_base_text < 0.15
    assert e.fvu_base_model_chat_text > e.fvu_base_model_base_text
    assert e.fvu_chat_model_chat_text > e.fvu_base_model_chat_text


@pytest.mark.slow
def test_manifest_records_the_build(zoo_nano):
    manifest = read_manifest(zoo_nano.root)
    assert manifest["config"] == NANO.to_dict() and manifest["seed"] == 0
    assert manifest["hookpoint"] == "layers.2"
    assert {"torch", "transformers", "trl", "eai-sparsify"} <= set(manifest["versions"])
    assert "base/model.safetensors" in manifest["files"]
    assert "sae/layers.2/sae.safetensors" in manifest["files"]
    assert check_zoo(zoo_nano.root, identity(NANO.to_dict(), 0, False)).ok


@pytest.mark.slow
def test_matching_zoo_is_reused_not_rebuilt(zoo_nano):
    weights = zoo_nano.chat / "model.safetensors"
    before = weights.stat().st_mtime_ns
    assert ensure_zoo("nano", zoo_nano.root, progress=False) == zoo_nano
    assert weights.stat().st_mtime_ns == before


@pytest.mark.slow
def test_check_zoo_detects_mismatch_and_corruption(zoo_nano, tmp_path):
    expected = identity(NANO.to_dict(), 0, False)
    copy = tmp_path / "nano"
    shutil.copytree(zoo_nano.root, copy)
    assert check_zoo(copy, expected).ok

    assert "'seed' differs" in check_zoo(copy, identity(NANO.to_dict(), 1, False)).reason
    manifest = json.loads((copy / MANIFEST_NAME).read_text())
    manifest["versions"]["torch"] = "0.0.1"
    (copy / MANIFEST_NAME).write_text(json.dumps(manifest))
    assert "'versions' differs" in check_zoo(copy, expected).reason

    shutil.copy(zoo_nano.root / MANIFEST_NAME, copy / MANIFEST_NAME)
    (copy / "probes" / "harmful.jsonl").unlink()
    assert "missing file" in check_zoo(copy, expected).reason
    shutil.copy(zoo_nano.root / "probes" / "harmful.jsonl", copy / "probes" / "harmful.jsonl")
    with open(copy / "sae" / "layers.2" / "sae.safetensors", "r+b") as f:
        f.seek(-4, 2)
        f.write(b"\0\0\0\0")
    assert "sha256" in check_zoo(copy, expected).reason
    (copy / MANIFEST_NAME).write_text("{not json")
    assert "not valid JSON" in check_zoo(copy, expected).reason


@pytest.mark.slow
def test_corrupted_zoo_is_rebuilt_identically(zoo_nano, tmp_path):
    """A damaged cache is rebuilt; the same seed gives the same fingerprints, weights included."""
    copy = tmp_path / "nano"
    shutil.copytree(zoo_nano.root, copy)
    corrupted = copy / "chat" / "model.safetensors"
    corrupted.write_bytes(corrupted.read_bytes()[:-16])
    (copy / "probes" / "chat_text.jsonl").unlink()

    paths = ensure_zoo("nano", copy, progress=False)

    assert paths.root == copy and check_zoo(copy, identity(NANO.to_dict(), 0, False)).ok
    assert read_manifest(copy)["files"] == read_manifest(zoo_nano.root)["files"]
    assert not list(tmp_path.glob(".nano.building-*")) and not list(tmp_path.glob(".nano.old-*"))


def test_killed_build_leaves_no_half_zoo(tmp_path):
    from featuredrift.zoo.build import build_zoo

    class Killed(Exception):
        pass

    def kill_at_base_model(stage, event):
        if stage == "base model":
            raise Killed

    root = tmp_path / "nano"
    with pytest.raises(Killed):
        build_zoo(root, NANO, 0, on_stage=kill_at_base_model)
    assert not root.exists()
    assert [p.name for p in tmp_path.iterdir()] == []


def test_build_never_replaces_a_folder_that_is_not_a_zoo(tmp_path):
    (tmp_path / "notes.txt").write_text("precious")
    with pytest.raises(FileExistsError, match="is not a zoo"):
        ensure_zoo("nano", tmp_path, progress=False)
    assert (tmp_path / "notes.txt").read_text() == "precious"


def test_cli_info_without_a_zoo_says_how_to_build(tmp_path):
    from typer.testing import CliRunner

    from featuredrift.cli.main import app

    result = CliRunner().invoke(app, ["zoo", "info", "--root", str(tmp_path / "none")])
    assert result.exit_code == 1
    assert "featuredrift zoo build --size nano" in result.output


@pytest.mark.slow
def test_cli_build_reuses_and_info_reports(zoo_nano):
    from typer.testing import CliRunner

    from featuredrift.cli.main import app

    runner = CliRunner()
    built = runner.invoke(app, ["zoo", "build", "--size", "nano", "--out", str(zoo_nano.root)])
    assert built.exit_code == 0, built.output
    assert "ready at" in built.output and "Building zoo" not in built.output
    info = runner.invoke(app, ["zoo", "info", "--root", str(zoo_nano.root), "--json"])
    assert info.exit_code == 0, info.output
    assert json.loads(info.output)["manifest"]["hookpoint"] == "layers.2"
