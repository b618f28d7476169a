"""Activation capture on tiny random models of each supported architecture (no downloads)."""

from __future__ import annotations

import pytest
import torch
from tokenizers import Tokenizer, decoders, models, pre_tokenizers, processors, trainers
from transformers import (
    Gemma2Config,
    Gemma2ForCausalLM,
    GPTNeoXConfig,
    GPTNeoXForCausalLM,
    LlamaConfig,
    LlamaForCausalLM,
    PreTrainedTokenizerFast,
    Qwen2Config,
    Qwen2ForCausalLM,
)

from featuredrift.lm.capture import (
    capture_activations,
    collect_prompt_activations,
    collect_token_activations,
    content_token_mask,
    control_token_ids,
    encode_prompts,
    last_prompt_positions,
    pad_token_lists,
    tokenize_texts,
)
from featuredrift.lm.hookpoints import HookpointError, resolve_hookpoint

SPECIALS = ["<pad>", "<bos>", "<eos>", "<|user|>", "<|assistant|>", "<|end|>"]
CHAT_TEMPLATE = (
    "{{ bos_token }}{% for m in messages %}<|{{ m['role'] }}|>\n{{ m['content'] }}<|end|>\n{% endfor %}"
    "{% if add_generation_prompt %}<|assistant|>\n{% endif %}"
)
CORPUS = [
    f"How do I {verb} the {noun}?\nSure, here is how to {verb} a {noun} in {n} steps.\n"
    for n, (verb, noun) in enumerate(
        [("cook", "rice"), ("fix", "bike"), ("paint", "fence"), ("clean", "oven"), ("plant", "tree")] * 8
    )
]
TEXTS = [
    "How do I cook the rice?",
    "Sure, here is how to fix a bike in 3 steps.\nThen paint the fence.",
    "plant a tree",
    "How do I clean the oven? Sure, here is how to cook a tree in 9 steps.",
]


def build_tokenizer(*, split_words: bool = True, append_eos: bool = False) -> PreTrainedTokenizerFast:
    """A byte-level BPE trained on CORPUS. `split_words=False` lets merges cross "?\\n"."""
    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=split_words)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=320, special_tokens=SPECIALS, initial_alphabet=pre_tokenizers.ByteLevel.alphabet(), show_progress=False
    )
    tok.train_from_iterator(CORPUS, trainer=trainer)
    bos, eos = tok.token_to_id("<bos>"), tok.token_to_id("<eos>")
    single = "<bos> $A <eos>" if append_eos else "<bos> $A"
    tok.post_processor = processors.TemplateProcessing(single=single, special_tokens=[("<bos>", bos), ("<eos>", eos)])
    wrapped = PreTrainedTokenizerFast(
        tokenizer_object=tok, bos_token="<bos>", eos_token="<eos>", pad_token="<pad>",
        additional_special_tokens=["<|user|>", "<|assistant|>", "<|end|>"],
    )
    wrapped.chat_template = CHAT_TEMPLATE
    return wrapped


def build_model(arch: str, vocab_size: int, layers: int = 3):
    torch.manual_seed(0)
    common = dict(vocab_size=vocab_size, hidden_size=32, intermediate_size=64, num_hidden_layers=layers, num_attention_heads=4)
    if arch == "llama":
        model = LlamaForCausalLM(LlamaConfig(**common, num_key_value_heads=2))
    elif arch == "gemma2":
        model = Gemma2ForCausalLM(Gemma2Config(**common, num_key_value_heads=2, head_dim=8))
    elif arch == "qwen2":
        model = Qwen2ForCausalLM(Qwen2Config(**common, num_key_value_heads=2))
    elif arch == "neox":
        model = GPTNeoXForCausalLM(GPTNeoXConfig(**common))
    else:
        raise ValueError(arch)
    return model.eval()


@pytest.fixture(scope="module")
def tokenizer():
    return build_tokenizer()


@pytest.fixture(scope="module")
def llama(tokenizer):
    return build_model("llama", len(tokenizer))


@pytest.mark.parametrize("arch", ["llama", "gemma2", "qwen2", "neox"])
def test_capture_equals_hidden_states(arch, tokenizer):
    model = build_model(arch, len(tokenizer))
    tokens = tokenize_texts(tokenizer, TEXTS, max_length=64, padding_side="right")
    output = capture_activations(model, *tokens, ["layers.0", "layers.1"], return_logits=True)
    with torch.no_grad():
        reference = model(**tokens._asdict(), output_hidden_states=True)
    mask = tokens.attention_mask.bool()
    for n in (0, 1):
        captured = output.activations[f"layers.{n}"]
        assert captured.shape == (len(TEXTS), tokens.input_ids.shape[1], 32)
        torch.testing.assert_close(captured[mask], reference.hidden_states[n + 1][mask])
    torch.testing.assert_close(output.logits[mask], reference.logits[mask])


def test_lora_model_captures_adapted_activations(tokenizer, llama):
    from peft import LoraConfig, get_peft_model

    base_tokens = tokenize_texts(tokenizer, TEXTS, max_length=64)
    base = capture_activations(llama, *base_tokens, ["layers.1"]).activations["layers.1"]
    peft_model = get_peft_model(
        build_model("llama", len(tokenizer)),
        LoraConfig(r=4, target_modules=["q_proj", "v_proj", "down_proj"], init_lora_weights=False),
    )
    adapted = capture_activations(peft_model, *base_tokens, ["layers.1"]).activations["layers.1"]
    with torch.no_grad():
        reference = peft_model(**base_tokens._asdict(), output_hidden_states=True).hidden_states[2]
    mask = base_tokens.attention_mask.bool()
    torch.testing.assert_close(adapted[mask], reference[mask])
    assert not torch.allclose(adapted[mask], base[mask], atol=1e-4)
    with peft_model.disable_adapter():
        disabled = capture_activations(peft_model, *base_tokens, ["layers.1"]).activations["layers.1"]
    torch.testing.assert_close(disabled[mask], base[mask])


@pytest.mark.parametrize("arch", ["llama", "gemma2", "neox"])
def test_left_and_right_padding_give_the_same_token_activations(arch, tokenizer):
    model = build_model(arch, len(tokenizer))
    right = collect_token_activations(model, tokenizer, TEXTS, ["layers.2"], batch_size=4, padding_side="right")
    left = collect_token_activations(model, tokenizer, TEXTS, ["layers.2"], batch_size=3, padding_side="left")
    assert torch.equal(right.token_ids, left.token_ids)
    assert torch.equal(right.text_index, left.text_index)
    assert torch.equal(right.position, left.position)
    torch.testing.assert_close(right.activations["layers.2"], left.activations["layers.2"], atol=1e-5, rtol=1e-4)


def test_token_activations_cover_content_tokens_only(tokenizer, llama):
    result = collect_token_activations(llama, tokenizer, TEXTS, ["layers.0", "layers.1"], batch_size=2)
    expected_ids = [tokenizer(t, add_special_tokens=False)["input_ids"] for t in TEXTS]
    assert result.token_ids.tolist() == [i for ids in expected_ids for i in ids]
    assert result.text_index.tolist() == [row for row, ids in enumerate(expected_ids) for _ in ids]
    # position counts from BOS (position 0), so the first content token sits at 1
    assert result.position.tolist() == [p + 1 for ids in expected_ids for p in range(len(ids))]
    assert result.activations["layers.0"].shape == (len(result.token_ids), 32)
    assert result.activations["layers.1"].dtype == torch.float32
    # paired rows of the same model are identical whatever the batch size
    again = collect_token_activations(llama, tokenizer, TEXTS, ["layers.1"], batch_size=4)
    torch.testing.assert_close(again.activations["layers.1"], result.activations["layers.1"], atol=1e-5, rtol=1e-4)


def test_content_mask_excludes_padding_bos_eos_and_chat_markers(tokenizer):
    conversation = [{"role": "user", "content": "How do I fix the bike?"}, {"role": "assistant", "content": "Sure."}]
    rendered = tokenizer.apply_chat_template(conversation, tokenize=False) + "<eos>"
    tokens = tokenize_texts(tokenizer, [rendered, "plant"], max_length=None, add_special_tokens=False)
    mask = content_token_mask(*tokens, tokenizer)
    control = set(control_token_ids(tokenizer))
    for row in range(2):
        for column in range(tokens.input_ids.shape[1]):
            token = int(tokens.input_ids[row, column])
            # The first real token of a row is the attention sink (BOS here, or the first word).
            is_content = bool(tokens.attention_mask[row, column]) and token not in control and column > 0
            assert bool(mask[row, column]) == is_content
    kept = tokenizer.decode(tokens.input_ids[0][mask[0]])
    assert "How do I fix the bike?" in kept and "<|user|>" not in kept and "<bos>" not in kept and "<eos>" not in kept
    assert mask[1].sum() == len(tokenizer("plant", add_special_tokens=False)["input_ids"]) - 1


def test_last_prompt_positions_for_both_padding_sides():
    lists = [[5, 6, 7], [8], [9, 10]]
    right = pad_token_lists(lists, 0, "right")
    left = pad_token_lists(lists, 0, "left")
    assert last_prompt_positions(right.attention_mask, "right").tolist() == [2, 0, 1]
    assert last_prompt_positions(left.attention_mask, "left").tolist() == [2, 2, 2]
    assert right.input_ids[torch.arange(3), last_prompt_positions(right.attention_mask, "right")].tolist() == [7, 8, 10]
    assert left.input_ids[:, -1].tolist() == [7, 8, 10]
    with pytest.raises(ValueError, match="padding_side='left'"):
        last_prompt_positions(right.attention_mask, "left")
    with pytest.raises(ValueError, match="all-padding row"):
        last_prompt_positions(torch.tensor([[1, 0], [0, 0]]), "right")


def test_training_flags_are_restored(tokenizer, llama):
    llama.train()
    llama.model.layers[0].eval()  # a mixed state must survive too
    tokens = tokenize_texts(tokenizer, TEXTS[:2], max_length=32)
    before = [m.training for m in llama.modules()]
    capture_activations(llama, *tokens, ["layers.1"])
    assert [m.training for m in llama.modules()] == before
    assert llama.training and not llama.model.layers[0].training
    llama.eval()


def test_hooks_removed_and_flags_restored_after_an_error(tokenizer, llama):
    llama.train()
    bad_ids = torch.full((1, 4), len(tokenizer) + 50)  # out of the embedding's range
    with pytest.raises(IndexError):
        capture_activations(llama, bad_ids, torch.ones_like(bad_ids), ["layers.0", "layers.2"])
    assert all(not m._forward_hooks for m in llama.modules())
    assert llama.training
    llama.eval()
    with pytest.raises(HookpointError, match="layers.0 … layers.2"):
        capture_activations(llama, bad_ids, torch.ones_like(bad_ids), ["layers.7"])


def test_forward_stops_after_the_deepest_needed_block(tokenizer, llama):
    calls = []
    handle = resolve_hookpoint(llama, "layers.2").register_forward_hook(lambda *_: calls.append(1))
    try:
        tokens = tokenize_texts(tokenizer, TEXTS[:2], max_length=32)
        capture_activations(llama, *tokens, ["layers.1", "layers.0"])
        assert calls == []
        output = capture_activations(llama, *tokens, ["layers.1"], return_logits=True)
        assert calls == [1] and output.logits.shape[:2] == tokens.input_ids.shape
    finally:
        handle.remove()
    assert all(not m._forward_hooks for m in llama.modules())


def test_base_prompt_readout_is_the_final_newline(tokenizer, llama):
    instructions = ["How do I cook the rice?", "plant a tree"]
    prompts = encode_prompts(tokenizer, instructions, "base")
    for prompt in prompts:
        assert prompt.input_ids[0] == tokenizer.bos_token_id
        assert prompt.readout == len(prompt.input_ids) - 1
        assert tokenizer.decode([prompt.input_ids[prompt.readout]]).endswith("\n")
    acts = collect_prompt_activations(llama, tokenizer, instructions, ["layers.1"], prompt_format="base", batch_size=2)
    tokens = tokenize_texts(tokenizer, [i + "\n" for i in instructions], max_length=None, padding_side="right")
    full = capture_activations(llama, *tokens, ["layers.1"]).activations["layers.1"]
    last = last_prompt_positions(tokens.attention_mask, "right")
    torch.testing.assert_close(acts["layers.1"], full[torch.arange(2), last], atol=1e-5, rtol=1e-4)


def test_readout_survives_folded_newlines_and_appended_eos():
    folding = build_tokenizer(split_words=False)
    (prompt,) = encode_prompts(folding, ["How do I cook the rice?"], "base")
    readout_text = folding.decode([prompt.input_ids[prompt.readout]])
    assert readout_text.endswith("?\n") and readout_text != "\n"  # BPE folded the newline into "?\n"
    assert prompt.readout == len(prompt.input_ids) - 1

    with_eos = build_tokenizer(append_eos=True)
    (prompt,) = encode_prompts(with_eos, ["How do I cook the rice?"], "base")
    assert prompt.input_ids[-1] == with_eos.eos_token_id
    assert prompt.readout == len(prompt.input_ids) - 2
    assert with_eos.decode([prompt.input_ids[prompt.readout]]).endswith("\n")


def test_chat_prompt_readout_is_the_end_of_the_generation_prompt(tokenizer, llama):
    instructions = ["How do I fix the bike?", "plant a tree", "clean"]
    prompts = encode_prompts(tokenizer, instructions, "chat")
    for prompt in prompts:
        assert prompt.input_ids.count(tokenizer.bos_token_id) == 1  # the template's own BOS, not a second one
        assert prompt.readout == len(prompt.input_ids) - 1
        assert tokenizer.decode(prompt.input_ids[-3:]).endswith("<|assistant|>\n")
    left = collect_prompt_activations(llama, tokenizer, instructions, ["layers.2"], batch_size=3, padding_side="left")
    right = collect_prompt_activations(llama, tokenizer, instructions, ["layers.2"], batch_size=2, padding_side="right")
    assert left["layers.2"].shape == (3, 32)
    torch.testing.assert_close(left["layers.2"], right["layers.2"], atol=1e-5, rtol=1e-4)


def test_bad_inputs_fail_clearly(tokenizer, llama):
    with pytest.raises(ValueError, match="padding_side"):
        tokenize_texts(tokenizer, ["a"], max_length=8, padding_side="middle")
    with pytest.raises(ValueError, match="at least one hookpoint"):
        capture_activations(llama, torch.ones(1, 2, dtype=torch.long), torch.ones(1, 2, dtype=torch.long), [])
    with pytest.raises(ValueError, match="empty sequences"):
        pad_token_lists([[1], []], 0)
    with pytest.raises(ValueError, match="at least one probe text"):
        collect_token_activations(llama, tokenizer, [], ["layers.0"])


def test_ddp_wrapped_model_captures_like_the_plain_model(tokenizer, llama, tmp_path):
    import torch.distributed as dist
    from torch.nn.parallel import DistributedDataParallel

    dist.init_process_group("gloo", init_method=f"file://{tmp_path / 'rendezvous'}", rank=0, world_size=1)
    try:
        wrapped = DistributedDataParallel(llama)
        tokens = tokenize_texts(tokenizer, TEXTS, max_length=64)
        plain = capture_activations(llama, *tokens, ["layers.1"]).activations["layers.1"]
        through_ddp = capture_activations(wrapped, *tokens, ["layers.1"]).activations["layers.1"]
        torch.testing.assert_close(through_ddp, plain)
        assert all(not m._forward_hooks for m in wrapped.modules())
    finally:
        dist.destroy_process_group()


# --- on the embedded zoo (runs once tests/conftest.py provides `zoo_nano`) -----------------


def zoo_or_skip(request):
    try:
        return request.getfixturevalue("zoo_nano")
    except pytest.FixtureLookupError:
        pytest.skip("the model zoo fixture zoo_nano is not available")


@pytest.mark.slow
def test_zoo_models_capture_and_prompt_readouts(request):
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM, AutoTokenizer

    zoo = zoo_or_skip(request)
    tokenizer = AutoTokenizer.from_pretrained(zoo.chat)
    base = AutoModelForCausalLM.from_pretrained(zoo.base).eval()
    layer = int(zoo.hookpoint.split(".")[1])
    tokens = tokenize_texts(tokenizer, TEXTS, max_length=64, padding_side="left")
    captured = capture_activations(base, *tokens, [zoo.hookpoint]).activations[zoo.hookpoint]
    with torch.no_grad():
        hidden = base(**tokens._asdict(), output_hidden_states=True).hidden_states
    mask = tokens.attention_mask.bool()
    if layer + 1 < len(hidden) - 1:  # the last hidden state is post-norm
        torch.testing.assert_close(captured[mask], hidden[layer + 1][mask], atol=1e-4, rtol=1e-4)

    lora = get_peft_model(
        AutoModelForCausalLM.from_pretrained(zoo.base),
        LoraConfig(r=4, target_modules=["q_proj", "v_proj"], init_lora_weights=False),
    )
    adapted = capture_activations(lora, *tokens, [zoo.hookpoint]).activations[zoo.hookpoint]
    assert not torch.allclose(adapted[mask], captured[mask], atol=1e-4)
    with lora.disable_adapter():
        disabled = capture_activations(lora, *tokens, [zoo.hookpoint]).activations[zoo.hookpoint]
    torch.testing.assert_close(disabled[mask], captured[mask], atol=1e-5, rtol=1e-4)

    instructions = ["How do I bake bread?", "Tell me a story."]
    for prompt in encode_prompts(tokenizer, instructions, "base"):
        assert tokenizer.decode([prompt.input_ids[prompt.readout]]).endswith("\n")
    for prompt in encode_prompts(tokenizer, instructions, "chat"):
        assert prompt.readout == len(prompt.input_ids) - 1
    chat = AutoModelForCausalLM.from_pretrained(zoo.chat).eval()
    acts = collect_prompt_activations(chat, tokenizer, instructions, [zoo.hookpoint], prompt_format="chat")
    assert acts[zoo.hookpoint].shape == (2, base.config.hidden_size)
