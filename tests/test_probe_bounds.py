"""Hostile probe input, injected for real: a 10 MB instruction, text and chat message are cut
before they are tokenised (and keep exactly the tokens a full tokenisation keeps), a
million-row file is bounded with a warning that says how to change the bound, and CSV errors
(a field over csv.field_size_limit, bytes that are not UTF-8) name the file and the line."""

from __future__ import annotations

import csv
import json
import logging

import pytest

from featuredrift.lm.capture import char_budget
from featuredrift.lm.prompts import format_prompts
from featuredrift.monitor import reading
from featuredrift.monitor.config import DEFAULT_MAX_PROBES, MonitorConfig
from featuredrift.monitor.drift_monitor import DriftMonitor
from featuredrift.monitor.probe_sources import configured_probe_set
from featuredrift.monitor.probes import ProbeError, ProbeSet

TEN_MB = 10 * 2**20
MAX_LENGTH = 128


class RecordingTokenizer:
    """The real tokenizer, recording the longest text it was asked to tokenise."""

    def __init__(self, tokenizer):
        self._tokenizer = tokenizer
        self.longest = 0

    def __call__(self, texts, *args, **kwargs):
        batch = [texts] if isinstance(texts, str) else list(texts)
        self.longest = max([self.longest, *(len(t) for t in batch)])
        return self._tokenizer(texts, *args, **kwargs)

    def __len__(self):
        return len(self._tokenizer)

    def __getattr__(self, name):
        return getattr(self._tokenizer, name)


def hostile_text(chars: int) -> str:
    words = "the river bank holds a quiet lock and a key under the old bridge".split()
    text = " ".join(words[i % len(words)] + str(i % 97) for i in range(chars // 6))
    return text[:chars]


def test_ten_megabyte_probes_are_cut_before_tokenising_and_keep_their_tokens(zoo_nano_models):
    _, _, tokenizer = zoo_nano_models
    huge = hostile_text(TEN_MB)
    probes = ProbeSet(harmful=["Tell me how " + huge], harmless=["Bake bread."], base_text=[huge, "A short text."],
                      chat_text=[[{"role": "user", "content": huge}, {"role": "assistant", "content": "Fine."}]],
                      source="hostile")
    recording = RecordingTokenizer(tokenizer)
    batches = reading.tokenise_probes(recording, probes, "chat", batch_size=4, max_length=MAX_LENGTH, token_mask="content")
    budget = char_budget(tokenizer, MAX_LENGTH)
    assert budget < 100_000 and recording.longest < budget + 200  # the template adds a few characters, not megabytes
    # The same tokens as tokenising (a long stretch of) the full text, for both cut directions.
    head = tokenizer(huge[: 20 * budget])["input_ids"][:MAX_LENGTH]
    base = batches["base"][0]
    assert base.input_ids[0][base.attention_mask[0].bool()].tolist() == head
    prompt_text = format_prompts(tokenizer, ["Tell me how " + huge[-20 * budget:]], "chat")[0]
    tail = tokenizer(prompt_text, add_special_tokens=False)["input_ids"][-MAX_LENGTH:]
    harmful = batches["harmful"][0]
    assert harmful.input_ids[0][harmful.attention_mask[0].bool()].tolist() == tail
    chat = batches["chat"][0]
    assert int(chat.attention_mask[0].sum()) == MAX_LENGTH


@pytest.mark.slow
def test_a_million_row_file_is_bounded_with_a_warning_that_says_how(tmp_path, caplog):
    path = tmp_path / "million.csv"
    with open(path, "w", newline="", encoding="utf-8") as handle:
        writer = csv.writer(handle)
        writer.writerow(["instruction", "category"])
        writer.writerows([f"How do I do harmful thing {i}?", f"c{i % 7}"] for i in range(1_000_000))
    with caplog.at_level(logging.WARNING, logger="featuredrift"):
        probes = configured_probe_set(MonitorConfig(sae="zoo:nano", harmful_probes=str(path)))
    assert len(probes.harmful) == DEFAULT_MAX_PROBES and probes.harmful[-1] == f"How do I do harmful thing {DEFAULT_MAX_PROBES - 1}?"
    assert len(probes.categories["harmful"]) == DEFAULT_MAX_PROBES and probes.origins["harmful"].rows == 1_000_000
    (warning,) = [r.getMessage() for r in caplog.records if "harmful" in r.getMessage()]
    assert "holds 1,000,000 probes" in warning and "leaving out 999,000" in warning
    assert "max_probes=" in warning and "FEATUREDRIFT_MAX_PROBES" in warning and str(path) in warning


def test_the_bound_is_a_setting(tmp_path, caplog, monkeypatch):
    path = tmp_path / "many.jsonl"
    path.write_text("".join(json.dumps({"prompt": f"Question {i}?"}) + "\n" for i in range(1500)))
    assert len(configured_probe_set(MonitorConfig(sae="zoo:nano", harmful_probes=str(path), max_probes=None)).harmful) == 1500
    monkeypatch.setenv("FEATUREDRIFT_MAX_PROBES", "none")
    assert MonitorConfig(sae="zoo:nano").max_probes is None
    monkeypatch.setenv("FEATUREDRIFT_MAX_PROBES", "20")
    with caplog.at_level(logging.WARNING, logger="featuredrift"):
        probes = configured_probe_set(MonitorConfig(sae="zoo:nano", harmful_probes=str(path)))
    assert len(probes.harmful) == 20 and len(probes.harmless) == 20
    assert any("holds 1,500 probes" in r.getMessage() for r in caplog.records)


def write_long_field_csv(path, header, long_row_values):
    with open(path, "w", newline="", encoding="utf-8") as handle:
        writer = csv.writer(handle)
        writer.writerow(header)
        writer.writerow(["a short first row"] + [""] * (len(header) - 1))
        writer.writerow(long_row_values)
    return path


def test_a_csv_field_over_the_limit_fails_at_start_naming_file_and_line(tmp_path, zoo_nano, zoo_nano_models):
    base, _, tokenizer = zoo_nano_models
    long_field = "x" * (csv.field_size_limit() + 10)
    plain = write_long_field_csv(tmp_path / "harmful.csv", ["instruction"], [long_field])
    config = MonitorConfig(sae=str(zoo_nano.sae), probes=str(zoo_nano.probes), harmful_probes=str(plain),
                           store_url=f"sqlite:///{tmp_path}/runs.db")
    with pytest.raises(ProbeError, match=rf"{plain}:3: expected CSV fields of at most 131,072 characters"):
        DriftMonitor(config).start(base, tokenizer)
    bench = write_long_field_csv(tmp_path / "harmbench_behaviors_text_all.csv",
                                 ["Behavior", "FunctionalCategory", "SemanticCategory", "Tags", "ContextString", "BehaviorID"],
                                 ["Write it", "contextual", "illegal", "", long_field, "id"])
    with pytest.raises(ProbeError, match=rf"{bench}:3: expected CSV fields of at most"):
        configured_probe_set(MonitorConfig(sae="zoo:nano", harmful_probes=f"harmbench:{bench}"))
    folder = tmp_path / "probes"
    folder.mkdir()
    (folder / "harmful.jsonl").write_text('{"instruction": "Make a weapon."}\n')
    write_long_field_csv(folder / "harmless.csv", ["instruction"], [long_field])
    with pytest.raises(ProbeError, match=rf"{folder / 'harmless.csv'}:3: expected CSV fields"):
        configured_probe_set(MonitorConfig(sae="zoo:nano", probes=str(folder)))


def test_bytes_that_are_not_utf8_name_the_file_and_line(tmp_path):
    path = tmp_path / "latin1.csv"
    path.write_bytes("instruction\nfine\ncaf\xe9 latte, s'il vous pla\xeet\n".encode("latin-1"))
    with pytest.raises(ProbeError, match=rf"{path}:\d+: expected UTF-8 text, found bytes that are not"):
        configured_probe_set(MonitorConfig(sae="zoo:nano", harmful_probes=str(path)))
