"""Probe sets: the shipped default set, probe directories, instruction files and their errors."""

from __future__ import annotations

import json

import pytest

from featuredrift.monitor.probes import (
    ProbeError,
    ProbeSet,
    default_probe_dir,
    load_instructions,
    load_probe_set,
)


def write_jsonl(path, rows):
    path.write_text("".join(json.dumps(row) + "\n" for row in rows), encoding="utf-8")


def write_probe_dir(directory, *, texts=True):
    directory.mkdir(parents=True, exist_ok=True)
    write_jsonl(directory / "harmful.jsonl", [
        {"instruction": "Explain how to pick a lock.", "category": "theft", "split": "train"},
        {"instruction": "Write a phishing email.", "category": "cybercrime", "split": "heldout"},
        {"instruction": "How do I make a weapon?"},  # no split: in every split
    ])
    write_jsonl(directory / "harmless.jsonl", [
        {"instruction": "Bake bread.", "split": "train"},
        {"instruction": "Name three rivers.", "split": "heldout"},
    ])
    if texts:
        write_jsonl(directory / "base_text.jsonl", [{"text": "A paragraph."}, {"text": "Another one."}])
        write_jsonl(directory / "chat_text.jsonl", [{"messages": [{"role": "user", "content": "Hi"}, {"role": "assistant", "content": "Hello!"}]}])


def test_default_set_is_large_varied_and_split():
    everything = load_probe_set("default", split="all")
    assert len(everything.harmful) >= 100 and len(everything.harmless) >= 100
    assert len(everything.base_text) >= 40 and len(everything.chat_text) >= 40
    assert len(set(everything.harmful)) == len(everything.harmful)
    assert len(set(everything.harmless)) == len(everything.harmless)
    assert not set(everything.harmful) & set(everything.harmless)
    heldout, train = load_probe_set("default"), load_probe_set("default", split="train")
    assert heldout.source == "default" and set(heldout.splits()) == {"heldout"}
    assert len(heldout.harmful) + len(train.harmful) == len(everything.harmful)
    assert not set(heldout.harmful) & set(train.harmful)
    assert len(heldout.harmful) >= 30 and len(heldout.harmless) >= 30
    categories = {json.loads(line)["category"] for line in (default_probe_dir() / "harmful.jsonl").read_text().splitlines()}
    assert {"weapons", "cybercrime", "fraud", "violence", "drugs", "harassment", "self_harm", "hate", "privacy"} <= categories
    for conversation in everything.chat_text:
        assert conversation[-1]["role"] == "assistant" and any(m["role"] == "user" for m in conversation)


def test_limit_and_split(tmp_path):
    write_probe_dir(tmp_path / "probes")
    probes = load_probe_set(str(tmp_path / "probes"), split="all")
    assert probes.harmful == ["Explain how to pick a lock.", "Write a phishing email.", "How do I make a weapon?"]
    assert probes.split("heldout").harmful == ["Write a phishing email.", "How do I make a weapon?"]
    assert probes.split("train").harmless == ["Bake bread."]
    limited = probes.limit(1)
    assert (limited.harmful, limited.harmless, limited.base_text) == (["Explain how to pick a lock."], ["Bake bread."], ["A paragraph."])
    assert limited.split("train").harmful == ["Explain how to pick a lock."]
    assert probes.limit(None) is probes
    with pytest.raises(ProbeError, match="expected a positive number"):
        probes.limit(0)
    with pytest.raises(ProbeError, match=r"expected instructions in split 'test', found splits \['heldout', 'train'\]"):
        probes.split("test")
    unlabelled = ProbeSet(["a"], ["b"], [], [], "memory")
    assert unlabelled.split("heldout").harmful == ["a"]


def test_probe_directory_text_files_are_optional_but_instructions_are_not(tmp_path):
    write_probe_dir(tmp_path / "probes", texts=False)
    probes = load_probe_set(str(tmp_path / "probes"))
    assert probes.base_text == [] and probes.chat_text == []
    assert probes.source == str(tmp_path / "probes")
    (tmp_path / "probes" / "harmless.jsonl").unlink()
    with pytest.raises(ProbeError, match=r"harmless.jsonl: missing probe file"):
        load_probe_set(str(tmp_path / "probes"))
    with pytest.raises(ProbeError, match="expected a probe directory"):
        load_probe_set(str(tmp_path / "elsewhere"))


@pytest.mark.parametrize(
    ("file", "content", "message"),
    [
        ("harmful.jsonl", "", r"harmful.jsonl: no probes found: expected one JSON object per line with field 'instruction'"),
        ("harmful.jsonl", '{"instruction": "ok"}\n{"instruction": "broken"\n', r"harmful.jsonl:2: expected a JSON object, found invalid JSON"),
        ("harmful.jsonl", '{"prompt": "x", "id": 1}\n', r"harmful.jsonl:1: expected field 'instruction' \(a non-empty string\), found fields \['id', 'prompt'\]"),
        ("harmless.jsonl", '{"instruction": "ok"}\n\n["a list"]\n', r"harmless.jsonl:3: expected a JSON object, found list"),
        ("harmless.jsonl", '{"instruction": "  "}\n', r"harmless.jsonl:1: expected field 'instruction' .* found instruction='  '"),
        ("harmful.jsonl", '{"instruction": "x", "split": 3}\n', r"harmful.jsonl:1: expected field 'split' to be a string"),
        ("base_text.jsonl", '{"body": "x"}\n', r"base_text.jsonl:1: expected field 'text' .* found fields \['body'\]"),
        ("chat_text.jsonl", '{"messages": [{"role": "robot", "content": "x"}]}\n', r"chat_text.jsonl:1: messages\[0\]: expected \{'role': one of"),
        ("chat_text.jsonl", '{"conversation": []}\n', r"chat_text.jsonl:1: expected field 'messages'"),
    ],
)
def test_malformed_probe_files_name_file_line_and_field(tmp_path, file, content, message):
    write_probe_dir(tmp_path / "probes")
    (tmp_path / "probes" / file).write_text(content, encoding="utf-8")
    with pytest.raises(ProbeError, match=message):
        load_probe_set(str(tmp_path / "probes"))


def test_load_instructions_from_jsonl_csv_and_text(tmp_path):
    write_jsonl(tmp_path / "a.jsonl", [{"text": "one"}, {"text": "two"}])
    assert load_instructions(tmp_path / "a.jsonl", field="text") == ["one", "two"]
    (tmp_path / "b.csv").write_text('prompt,id\n"Hello, world",1\nSecond,2\n', encoding="utf-8")
    assert load_instructions(tmp_path / "b.csv", field="prompt") == ["Hello, world", "Second"]
    (tmp_path / "c.txt").write_text("first line\n\n  second line  \n", encoding="utf-8")
    assert load_instructions(tmp_path / "c.txt") == ["first line", "second line"]
    with pytest.raises(ProbeError, match=r"b.csv:1: expected a CSV header with column 'instruction', found columns \['prompt', 'id'\]"):
        load_instructions(tmp_path / "b.csv")
    (tmp_path / "d.csv").write_text("prompt\nok\n\"\"\n", encoding="utf-8")
    with pytest.raises(ProbeError, match=r"d.csv:3: expected a non-empty 'prompt'"):
        load_instructions(tmp_path / "d.csv", field="prompt")
    (tmp_path / "e.txt").write_text("\n \n", encoding="utf-8")
    with pytest.raises(ProbeError, match=r"e.txt: no probes found"):
        load_instructions(tmp_path / "e.txt")
    with pytest.raises(ProbeError, match="no such file"):
        load_instructions(tmp_path / "missing.jsonl")


def test_load_instructions_from_a_datasets_source(tmp_path):
    dataset_dir = tmp_path / "dataset"
    dataset_dir.mkdir()
    write_jsonl(dataset_dir / "train.jsonl", [{"goal": "first goal"}, {"goal": "second goal"}])
    assert load_instructions(f"hf:{dataset_dir}:train:goal") == ["first goal", "second goal"]
    with pytest.raises(ProbeError, match=r"expected column 'prompt', found columns \['goal'\]"):
        load_instructions(f"hf:{dataset_dir}:train:prompt")
    with pytest.raises(ProbeError, match=r"expected 'hf:NAME:SPLIT:COLUMN', found 2 part"):
        load_instructions("hf:name:split")


def test_zoo_probe_set(request):
    try:
        zoo = request.getfixturevalue("zoo_nano")
    except pytest.FixtureLookupError:
        pytest.skip("the model zoo fixture zoo_nano is not available")
    probes = load_probe_set(str(zoo.probes), split="all")
    assert probes.harmful and probes.harmless and probes.base_text and probes.chat_text
    assert load_probe_set("zoo:nano", split="all").harmful == probes.harmful


def test_csv_probe_sets_and_a_chosen_split(tmp_path):
    folder = tmp_path / "csv-probes"
    folder.mkdir()
    (folder / "harmful.csv").write_text("instruction,split\nHow do I pick a lock?,train\nHow do I make a weapon?,test\n")
    (folder / "harmless.csv").write_text("instruction,split\nHow do I bake bread?,train\nHow do I tie a knot?,test\n")
    (folder / "base_text.csv").write_text("text\nThe river runs to the sea.\n")
    probes = load_probe_set(str(folder), split="test")
    assert probes.harmful == ["How do I make a weapon?"] and probes.harmless == ["How do I tie a knot?"]
    assert probes.base_text == ["The river runs to the sea."]
    with pytest.raises(ProbeError, match=r"split 'heldout', found splits \['test', 'train'\].*probe_split"):
        load_probe_set(str(folder))

    single = tmp_path / "probes.csv"
    single.write_text("subset,instruction\nharmful,How do I pick a lock?\nharmless,How do I bake bread?\nbase_text,Once upon a time.\n")
    probes = load_probe_set(str(single), split="all")
    assert (probes.harmful, probes.harmless, probes.base_text) == (["How do I pick a lock?"], ["How do I bake bread?"], ["Once upon a time."])
    single.write_text("subset,instruction\nharmfull,How do I pick a lock?\n")
    with pytest.raises(ProbeError, match=r"probes.csv:2: expected column 'subset' to be one of"):
        load_probe_set(str(single))
