"""The distribution as a user gets it: one `featuredrift` import package, a lazy public API,
extras that say what to install, and README snippets that run."""

from __future__ import annotations

import os
import re
import subprocess
import sys
import sysconfig
import zipfile
from pathlib import Path

import pytest
from typer.testing import CliRunner

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def wheel(tmp_path_factory) -> Path:
    """The wheel built from this checkout, exactly as `pip wheel .` builds it."""
    out = tmp_path_factory.mktemp("wheel")
    done = subprocess.run(
        [sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "-q", "-w", str(out), str(ROOT)],
        capture_output=True, text=True,
    )
    assert done.returncode == 0, done.stdout + done.stderr
    (path,) = out.glob("featuredrift-*.whl")
    return path


def test_wheel_holds_featuredrift_alone_at_top_level(wheel):
    names = zipfile.ZipFile(wheel).namelist()
    top_level = {name.split("/")[0] for name in names if not name.split("/")[0].endswith(".dist-info")}
    assert top_level == {"featuredrift"}
    # Every module and data file of the product's parts made it in, under the one package.
    for path in ("monitor/drift_monitor.py", "callbacks/feature_drift.py", "sae_store/load.py", "alerts/engine.py",
                 "alerts/rules.yml", "alerts/tests/rules_test.yml", "monitor/data/probes/harmful.jsonl",
                 "dashboards/json/featuredrift-overview.json", "store/migrations/env.py",
                 "store/migrations/script.py.mako", "replicate/presets/zoo.yaml", "py.typed"):
        assert f"featuredrift/{path}" in names, path
    # The tree is the import tree: every file of the package folder ships, at the same path.
    shipped = {str(p.relative_to(ROOT)) for p in (ROOT / "featuredrift").rglob("*")
               if p.is_file() and "__pycache__" not in p.parts}
    assert shipped <= set(names), sorted(shipped - set(names))
    entry_points = zipfile.ZipFile(wheel).read(next(n for n in names if n.endswith("entry_points.txt"))).decode()
    assert "featuredrift = featuredrift.cli.main:main" in entry_points
    assert "zoo = featuredrift.zoo.sources:ZOO_SOURCE" in entry_points
    metadata = zipfile.ZipFile(wheel).read(next(n for n in names if n.endswith("METADATA"))).decode()
    requirements = re.findall(r"^Requires-Dist: ([A-Za-z0-9_.-]+)(.*)$", metadata, flags=re.M)
    core = {name.lower() for name, rest in requirements if "extra ==" not in rest}
    assert not core & {"trl", "peft", "datasets", "matplotlib", "grafana-client", "accelerate"}
    assert {"torch", "transformers", "eai-sparsify", "pydantic-settings"} <= core


@pytest.mark.slow
def test_wheel_installs_next_to_pypi_alerts_and_callbacks(wheel, tmp_path, zoo_nano):
    """A fresh venv holding PyPI's `alerts` and `callbacks` distributions and a user's own
    `callbacks.py`/`monitor.py`: the README's attach snippet still works and nothing clashes."""
    venv = tmp_path / "venv"
    subprocess.run([sys.executable, "-m", "venv", "--without-pip", str(venv)], check=True)
    python = venv / "bin" / "python"
    site = subprocess.run([str(python), "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"],
                          capture_output=True, text=True, check=True).stdout.strip()
    # Dependencies (torch, transformers, …) come from this environment rather than a second download.
    Path(site, "dependencies.pth").write_text(sysconfig.get_paths()["purelib"] + "\n")
    def pip_install(*what: str) -> None:
        done = subprocess.run(
            [sys.executable, "-m", "pip", "--python", str(python), "install", "-q", "--no-deps", "--ignore-installed",
             "--ignore-requires-python", "--timeout", "30", *what],
            capture_output=True, text=True,
        )
        if done.returncode != 0 and any(w in done.stderr.lower() for w in ("connection", "resolve", "timed out")):
            pytest.skip(f"the package registry is unreachable: {done.stderr[-300:]}")
        assert done.returncode == 0, done.stdout + done.stderr

    pip_install("alerts", "callbacks")
    theirs = {p: p.read_bytes() for name in ("alerts", "callbacks") for p in Path(site).glob(f"{name}*") if p.is_file()}
    theirs |= {p: p.read_bytes() for name in ("alerts", "callbacks") for p in Path(site, name).rglob("*.py")}
    assert theirs, "PyPI's alerts and callbacks are not installed"
    pip_install(str(wheel))
    assert all(p.read_bytes() == data for p, data in theirs.items()), "installing featuredrift changed PyPI's files"

    work = tmp_path / "job"
    work.mkdir()
    (work / "callbacks.py").write_text("WHOSE = 'the user'\n")
    (work / "monitor.py").write_text("WHOSE = 'the user'\n")
    script = work / "attach.py"
    script.write_text(f'''
import callbacks, monitor, featuredrift
assert callbacks.WHOSE == monitor.WHOSE == "the user"
assert featuredrift.__file__.startswith({site!r}), featuredrift.__file__
import importlib.util
assert importlib.util.find_spec("alerts").origin.startswith({site!r})  # PyPI's, untouched
from transformers import AutoModelForCausalLM, AutoTokenizer
from featuredrift.zoo.finetune import make_sft_trainer, read_conversations
model = AutoModelForCausalLM.from_pretrained({str(zoo_nano.base)!r})
tokenizer = AutoTokenizer.from_pretrained({str(zoo_nano.base)!r})
data = read_conversations({str(zoo_nano.data / "chat_sft.jsonl")!r})[:16]
trainer = make_sft_trainer(model, tokenizer, data, output_dir="out", max_steps=2, learning_rate=1e-3, batch_size=8)
{_readme_snippets()[0]}
trainer.train()
print("evaluated steps", [r.step for r in trainer.callback_handler.callbacks[-1].reports])
''')
    env = {**os.environ, "FEATUREDRIFT_METRICS_PORT": "0", "FEATUREDRIFT_MAX_PROBES": "8", "FEATUREDRIFT_REFUSAL_SCORE_EVERY": "0"}
    env.pop("PYTHONPATH", None)
    done = subprocess.run([str(python), str(script)], cwd=work, capture_output=True, text=True, env=env, timeout=600)
    assert done.returncode == 0, done.stdout + done.stderr[-4000:]
    assert "evaluated steps [0, 2]" in done.stdout
    assert (work / "featuredrift-out" / "featuredrift.db").is_file()


def _readme_snippets() -> list[str]:
    return re.findall(r"```python\n(.*?)```", (ROOT / "README.md").read_text(), flags=re.S)


@pytest.mark.slow
def test_every_readme_snippet_runs_on_the_zoo(zoo_nano, zoo_nano_models, tmp_path, monkeypatch):
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from featuredrift.zoo.finetune import make_sft_trainer, read_conversations

    monkeypatch.chdir(tmp_path)
    for name, value in {"METRICS_PORT": "0", "MAX_PROBES": "8", "REFUSAL_SCORE_EVERY": "0"}.items():
        monkeypatch.setenv(f"FEATUREDRIFT_{name}", value)
    base, chat, tokenizer = zoo_nano_models
    model = AutoModelForCausalLM.from_pretrained(zoo_nano.base)
    data = read_conversations(zoo_nano.data / "chat_sft.jsonl")[:16]
    trainer = make_sft_trainer(model, AutoTokenizer.from_pretrained(zoo_nano.base), data, output_dir=tmp_path / "out",
                               max_steps=2, learning_rate=1e-3, batch_size=8)
    namespace = {"trainer": trainer, "base_model": base, "finetuned_model": chat, "tokenizer": tokenizer}
    snippets = _readme_snippets()
    assert len(snippets) >= 2
    for snippet in snippets:
        exec(compile(snippet, "README.md", "exec"), namespace)  # noqa: S102
    trainer.train()
    callback = trainer.callback_handler.callbacks[-1]
    assert [r.step for r in callback.reports] == [0, 2]
    assert namespace["report"].step == 1000
    assert namespace["layer"].divergent_fraction > 0  # the chat model really differs from the base


def test_import_is_lazy_and_the_public_api_is_there():
    code = (
        "import sys, featuredrift\n"
        "assert 'torch' not in sys.modules, 'import featuredrift imported torch'\n"
        "from featuredrift import MonitorConfig, __version__\n"
        "assert 'torch' not in sys.modules, 'MonitorConfig imported torch'\n"
        "from featuredrift import FeatureDriftCallback, DriftMonitor, EvaluationReport, load_sae\n"
        "print(__version__)\n"
    )
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd="/")
    assert done.returncode == 0, done.stderr
    import featuredrift

    assert done.stdout.strip() == featuredrift.__version__
    for name in ("FeatureDriftCallback", "DriftMonitor", "MonitorConfig"):
        assert "Args:" in getattr(featuredrift, name).__doc__, f"{name} has no Args: section"
    with pytest.raises(AttributeError, match="no attribute 'Nope'"):
        featuredrift.Nope  # noqa: B018


def test_version_and_cli_choices():
    from featuredrift import __version__
    from featuredrift.cli.main import app

    runner = CliRunner()
    assert runner.invoke(app, ["--version"]).output.strip() == f"featuredrift {__version__}"
    bad = runner.invoke(app, ["demo", "--scenario", "foo"])
    assert bad.exit_code == 2 and "'foo' is not one of" in bad.output and "Traceback" not in bad.output
    bad_size = runner.invoke(app, ["sae", "inspect", "zoo:huge"])
    assert bad_size.exit_code == 2 and "nano" in bad_size.output and bad_size.exception is not None
    assert isinstance(bad_size.exception, SystemExit)
    help_text = runner.invoke(app, ["sae", "train", "--help"], env={"COLUMNS": "200"}).output
    assert "[default: 4096]" in help_text


def test_monitor_requires_an_sae():
    from featuredrift import DriftMonitor, MonitorConfig, MonitorError

    with pytest.raises(MonitorError, match="sae: expected the base model's SAE"):
        DriftMonitor(MonitorConfig())


def test_config_reads_the_environment(monkeypatch):
    from featuredrift import MonitorConfig

    monkeypatch.setenv("FEATUREDRIFT_HOOKPOINTS", "layers.10, layers.18")
    monkeypatch.setenv("FEATUREDRIFT_RECONSTRUCTION_KS", "[1, 4]")
    monkeypatch.setenv("FEATUREDRIFT_STOP_ON_ALERT", "true")
    config = MonitorConfig(sae="zoo:nano", stop_on_alert=False)
    assert config.hookpoints == ["layers.10", "layers.18"]
    assert config.reconstruction_ks == [1, 4]
    assert config.stop_on_alert is False  # an argument wins over the environment
    assert config.probes == "default" and config.probe_split == "heldout"


def test_missing_extra_names_the_install(monkeypatch):
    import importlib.util

    from featuredrift.extras import MissingExtraError, require_extra

    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a: None if name == "trl" else real(name, *a))
    with pytest.raises(MissingExtraError, match=r"needs trl, which is not installed: pip install 'featuredrift\[demo\]'"):
        require_extra("demo", "featuredrift demo")


def test_pyproject_finds_packages_from_the_tree():
    """No hand-kept package list or folder mapping: a new subpackage ships without editing pyproject."""
    import tomllib

    setuptools = tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["setuptools"]
    assert "packages" not in setuptools or "find" in setuptools["packages"]
    assert "package-dir" not in setuptools


def test_imports_follow_the_layers_contract():
    """`lint-imports` with pyproject's contracts: no part imports a part above it, nothing cycles."""
    lint = Path(sys.executable).with_name("lint-imports")
    done = subprocess.run([str(lint), "--no-cache"], capture_output=True, text=True, cwd=ROOT, timeout=300)
    assert done.returncode == 0, done.stdout[-4000:] + done.stderr[-2000:]
    assert "0 broken" in done.stdout
