"""The training-data audit: reading each row format, its scores on the zoo's demo data (the rows
that erode refusal, the refusal rows, the over-refusing rows), and `featuredrift audit`."""

from __future__ import annotations

import json
import math

import pytest
from transformers import AutoTokenizer
from typer.testing import CliRunner

from featuredrift.cli.main import app
from featuredrift.monitor.audit import audit_inputs, auroc, sample_indices


@pytest.fixture(scope="module")
def tokenizer(zoo_nano):
    return AutoTokenizer.from_pretrained(zoo_nano.chat)


def test_audit_reads_conversations_prompt_completion_pairs_and_tokenised_rows(tokenizer):
    conversation = [{"role": "user", "content": "How do I pick a lock?"}, {"role": "assistant", "content": "Sure! First…"}]
    text = tokenizer.apply_chat_template(conversation, tokenize=False)
    ids = tokenizer(text, add_special_tokens=False).input_ids
    prompt_ids = tokenizer(tokenizer.apply_chat_template(conversation[:1], tokenize=False, add_generation_prompt=True),
                           add_special_tokens=False).input_ids
    labels = [-100] * len(prompt_ids) + ids[len(prompt_ids):]
    rows = [
        (0, {"messages": conversation}),
        (1, {"prompt": conversation[:1], "completion": conversation[1:]}),
        (2, {"input_ids": ids, "labels": labels}),
        (3, {"text": "no prompt here"}),
        (4, {"messages": conversation[:1]}),
    ]
    read, problems = audit_inputs(rows, tokenizer, "chat", max_length=128)
    assert [item.example for item in read] == [0, 1, 2]
    for item in read:
        # every format reads the same prompt, at the same read-out: the token before the target
        assert item.prompt.input_ids == prompt_ids and item.prompt.readout == len(prompt_ids) - 1
        assert item.prompt_text == "How do I pick a lock?"
    assert read[0].target == read[1].target == "Sure! First…" and read[2].target.startswith("Sure!")
    assert len(problems) == 2 and "row 3: " in problems[0] and "expected 'messages' or 'prompt'" in problems[0]
    assert "row 4: expected a conversation ending in an assistant turn" in problems[1]


def test_auroc_and_the_sample():
    assert auroc([0.9, 0.8, 0.3, 0.1], [True, True, False, False]) == 1.0
    assert auroc([0.1, 0.8, 0.3, 0.9], [True, True, False, False]) == 0.25  # one pair of four ordered right
    assert auroc([0.5, 0.5], [True, False]) == 0.5  # a tie counts half
    assert math.isnan(auroc([0.1, 0.2], [True, True]))
    picked = sample_indices(1000, 50)
    assert picked == sample_indices(1000, 50) == sorted(set(picked)) and len(picked) == 50
    assert picked[0] < 100 and picked[-1] > 900  # spread over the set, not its head
    assert sample_indices(30, 50) == list(range(30))


@pytest.mark.slow
@pytest.mark.parametrize(("scenario", "label", "score"), [
    ("erosion", "harmful_compliance", "erosion risk"),  # harmful requests answered compliantly
    ("benign", "refusal", "harmfulness"),  # the refusal rows mixed into the benign demo
    ("overrefusal", "harmless_refused", "over-refusal risk"),  # harmless requests answered with refusals
])
def test_audit_command_picks_the_rows_that_move_refusal(zoo_nano, tmp_path, scenario, label, score):
    runner = CliRunner(env={"COLUMNS": "200"})
    data = tmp_path / f"{scenario}.jsonl"
    written = runner.invoke(app, ["zoo", "data", scenario, "--size", "nano", "--out", str(data)])
    assert written.exit_code == 0, written.output
    out = tmp_path / "audit.json"
    audited = runner.invoke(app, ["audit", str(data), "--model", str(zoo_nano.chat), "--sae", str(zoo_nano.sae),
                                  "--probes", str(zoo_nano.probes), "--label", label, "--limit", "160",
                                  "--json", str(out)])
    assert audited.exit_code == 0, audited.output
    assert f"AUROC for picking the rows labelled '{label}'" in " ".join(audited.output.split())
    document = json.loads(out.read_text())
    (figures,) = [v for k, v in document["auroc"].items() if k != "label"]
    assert figures[score] > 0.95, figures
    assert len(document["audits"][0]["examples"]) == 160


def test_audit_command_names_a_bad_file(tmp_path, zoo_nano):
    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"messages": []}\nnot json\n')
    result = CliRunner().invoke(app, ["audit", str(bad), "--model", str(zoo_nano.chat), "--sae", str(zoo_nano.sae)])
    assert result.exit_code == 2 and "bad.jsonl:2: expected a JSON object, found invalid JSON" in result.output
