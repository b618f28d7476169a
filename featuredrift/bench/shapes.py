"""`featuredrift bench --shape NAME`: the monitor's cost at a real model's widths.

Everything runs in this process on random-initialised models (`bench_shapes`), except the
offline route, which must pay a fresh process. Measurement sizes are small so that a 2-core CPU
finishes in minutes; the realistic figures are extrapolated, and the output says how:
- training step: forward+backward timed at `measure_batch x measure_seq` tokens and at half
  the length, fitted as fixed + per-token cost and extrapolated to `train_batch x train_seq`
  (matmul cost is linear in tokens; attention's quadratic part is small at these lengths), plus
  the AdamW update, which does not depend on tokens;
- callback share at the cadence: `eval / (eval_every x step + eval)`, where `eval` is one
  evaluation plus the generation-based refusal score amortised over its cadence;
- depth: the model has `--layers` blocks, not the release's; the SAE and metric costs do not
  depend on depth, the forward and training step scale with it (both sides of the share alike).
Timings are the fastest of a few repeats; they are printed against targets, never asserted.
"""

from __future__ import annotations

import json
import os
import resource
import subprocess
import sys
import tempfile
import time
from dataclasses import asdict, dataclass, fields, is_dataclass
from pathlib import Path

import torch

from featuredrift.bench.shape_models import (
    PAPER_K,
    PAPER_LATENTS,
    build_model,
    build_sae,
    build_tokenizer,
    get_shape,
    probe_texts,
)


@dataclass
class ShapeBenchSettings:
    """What to build and how much to measure (defaults: the llama bench in minutes on 2 cores)."""

    shape: str
    layers: int = 2
    latents: int = PAPER_LATENTS
    k: int = PAPER_K
    device: str = "cpu"
    train_batch: int = 8  # the realistic training step the share is stated for
    train_seq: int = 512
    measure_batch: int = 1  # the step actually timed (extrapolated to train_batch x train_seq)
    measure_seq: int = 128
    eval_every: int = 50  # the callback's default cadence
    probes: int = 4  # prompts and texts per probe subset
    probe_length: int = 128
    encode_tokens: int = 1024
    repeats: int = 2
    offline: bool = True
    scaling: bool = True

    def check(self) -> None:
        get_shape(self.shape)
        for name in ("layers", "latents", "k", "train_batch", "train_seq", "measure_batch", "measure_seq",
                     "eval_every", "probes", "probe_length", "encode_tokens", "repeats"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name}: expected a positive integer, found {getattr(self, name)}")
        if self.device != "cpu" and not self.device.startswith("cuda"):
            raise ValueError(f"device: expected 'cpu' or 'cuda' (or 'cuda:N'), found {self.device!r}")
        if self.device.startswith("cuda") and not torch.cuda.is_available():
            raise ValueError(f"device: {self.device!r} asked for, but torch sees no CUDA device")


# Targets: key → (comparison, bound, where it comes from). Checked, printed, never asserted.
TARGETS = {
    "callback_share": ("≤", 0.03, "product target"),
    "callback_share_default_probes": ("≤", 0.03, "product target"),
    "evaluation_over_forward": ("≤", 1.3, "product target"),
    "encode_over_matmul": ("≤", 1.2, "ours: 'close to a dense matmul'"),
    "peak_memory_ratio": ("≤", 1.25, "ours"),
    "offline_over_live": ("≥", 1.0, "ours: the callback must beat the naive route"),
}


def target_verdicts(results: dict) -> dict[str, bool]:
    return {key: (results[key] <= bound if op == "≤" else results[key] >= bound) for key, (op, bound, _) in TARGETS.items()}


# ------------------------------------------------------------------------------ timing and memory
def _sync(device: str) -> None:
    if device.startswith("cuda"):
        torch.cuda.synchronize()


def _timed(fn, device: str) -> float:
    _sync(device)
    started = time.perf_counter()
    fn()
    _sync(device)
    return time.perf_counter() - started


def _fastest(fn, repeats: int, device: str) -> float:
    return min(_timed(fn, device) for _ in range(repeats))


class PeakMemory:
    """Peak memory inside a `with` block above what was resident when it began: CUDA allocator
    peaks on a GPU; on CPU the kernel's resident high-water mark (reset through
    /proc/self/clear_refs where Linux allows it, else the process's lifetime peak)."""

    def __init__(self, device: str):
        self.cuda = device.startswith("cuda")
        self.start_mb = self.peak_mb = 0.0

    def __enter__(self) -> PeakMemory:
        if self.cuda:
            torch.cuda.synchronize()
            torch.cuda.reset_peak_memory_stats()
            self.start_mb = torch.cuda.memory_allocated() / 2**20
        else:
            try:
                Path("/proc/self/clear_refs").write_text("5")
            except OSError:
                pass
            self.start_mb = _rss_mb("VmRSS")
        return self

    def __exit__(self, *exc) -> None:
        self.peak_mb = torch.cuda.max_memory_allocated() / 2**20 if self.cuda else _rss_mb("VmHWM")

    @property
    def extra_mb(self) -> float:
        return max(0.0, self.peak_mb - self.start_mb)


def _rss_mb(field: str) -> float:
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith(field + ":"):
                return int(line.split()[1]) / 1024
    except OSError:
        pass
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def tensor_megabytes(value) -> float:
    """Bytes of every tensor reachable through dataclass fields, dicts, lists and tuples, in MiB:
    the reference cache's size follows whatever the reading holds, without naming its fields."""
    if isinstance(value, torch.Tensor):
        return value.numel() * value.element_size() / 2**20
    if is_dataclass(value):
        return sum(tensor_megabytes(getattr(value, f.name)) for f in fields(value))
    if isinstance(value, dict):
        return sum(tensor_megabytes(v) for v in value.values())
    if isinstance(value, (list, tuple)):
        return sum(tensor_megabytes(v) for v in value)
    return 0.0


# ------------------------------------------------------------------------------ the parts
@dataclass
class Fixture:
    """What one bench builds once and every measurement shares."""

    model: torch.nn.Module
    tokenizer: object
    sae: torch.nn.Module
    hookpoint: str


def build_fixture(s: ShapeBenchSettings) -> Fixture:
    from featuredrift.monitor.probes import load_probe_set

    shape = get_shape(s.shape)
    tokenizer = build_tokenizer(shape.vocab, probe_texts(load_probe_set("default", split="all")))
    model = build_model(shape, s.layers, s.device)
    sae = build_sae(shape.hidden, s.latents, s.k, s.device)
    return Fixture(model, tokenizer, sae, f"layers.{s.layers // 2}")


def measure_training_step(fx: Fixture, s: ShapeBenchSettings) -> dict:
    """One AdamW step on random tokens, extrapolated to the realistic size. Forward+backward is
    timed at two lengths and fitted as fixed + per-token cost (a small step is dominated by
    fixed costs, e.g. the dense gradient of a large embedding); the optimizer update does not
    depend on tokens. The moments are freed afterwards; the training peak memory is kept."""
    model = fx.model.train()
    vocab = model.config.vocab_size
    short_seq = max(1, s.measure_seq // 2)
    long_ids = torch.randint(3, vocab, (s.measure_batch, s.measure_seq), device=s.device)
    short_ids = long_ids[:, :short_seq]
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-5)

    def forward_backward(ids):
        optimizer.zero_grad(set_to_none=True)
        model(input_ids=ids, labels=ids).loss.backward()

    forward_backward(long_ids)
    optimizer.step()  # warm-up: allocates the optimizer state
    short_s, long_s, update_s = [], [], []
    with PeakMemory(s.device) as memory:
        resident_mb = memory.start_mb
        for _ in range(s.repeats):
            short_s.append(_timed(lambda: forward_backward(short_ids), s.device))
            long_s.append(_timed(lambda: forward_backward(long_ids), s.device))
            update_s.append(_timed(optimizer.step, s.device))
    optimizer.zero_grad(set_to_none=True)
    optimizer.state.clear()  # free the moments now: the monitor's measurements come next
    model.eval()
    short_n, long_n = s.measure_batch * short_seq, s.measure_batch * s.measure_seq
    fixed = (min(short_s) * long_n - min(long_s) * short_n) / (long_n - short_n) if long_n > short_n else 0.0
    fixed = min(max(fixed, 0.0), min(long_s))  # noise can invert the two timings: never a negative per-token cost
    per_token = (min(long_s) - fixed) / long_n
    step_tokens = s.train_batch * s.train_seq
    return {"forward_backward_s": {str(short_n): min(short_s), str(long_n): min(long_s)},
            "forward_backward_fixed_s": fixed, "forward_backward_per_token_s": per_token, "optimizer_step_s": min(update_s),
            "measured_tokens": long_n, "step_s": fixed + per_token * step_tokens + min(update_s), "step_tokens": step_tokens,
            "train_peak_mb": memory.peak_mb, "train_resident_mb": resident_mb}


def _monitor(fx: Fixture, s: ShapeBenchSettings, *, probes: int, latents_sae=None, hookpoints: int = 1,
             refusal_score_every: int = 4):
    """A DriftMonitor on the bench's probe set; several hookpoints share one SAE (same cost, less memory)."""
    from featuredrift.monitor.config import MonitorConfig
    from featuredrift.monitor.drift_monitor import DriftMonitor
    from featuredrift.monitor.probes import load_probe_set

    sae = latents_sae or fx.sae
    layers = [fx.hookpoint] + [f"layers.{i}" for i in range(s.layers) if f"layers.{i}" != fx.hookpoint]
    if hookpoints > len(layers):
        raise ValueError(f"hookpoints: expected at most the {len(layers)} layers built, found {hookpoints}")
    config = MonitorConfig(max_length=s.probe_length, refusal_score_every=refusal_score_every, eval_every=s.eval_every)
    probe_set = load_probe_set("default").limit(probes)
    return DriftMonitor(config, probes=probe_set, saes={h: sae for h in layers[:hookpoints]})


def probe_tokens(monitor) -> int:
    return int(sum(b.attention_mask.sum() for batches in monitor.probe_batches.values() for b in batches))


def default_probe_scale(monitor) -> dict:
    """How much bigger the callback's default probe set is than the bench's: token-weighted over
    subsets (each subset's tokens scaled by its item count), and for generation by prompt count."""
    from featuredrift.monitor.probes import load_probe_set

    full = load_probe_set("default")
    counts = {"base": len(full.base_text), "chat": len(full.chat_text), "harmful": len(full.harmful), "harmless": len(full.harmless)}
    tokens = default_tokens = 0.0
    for subset, batches in monitor.probe_batches.items():
        subset_tokens = float(sum(b.attention_mask.sum() for b in batches))
        tokens += subset_tokens
        default_tokens += subset_tokens * counts[subset] / sum(b.input_ids.shape[0] for b in batches)
    prompts = sum(b.input_ids.shape[0] for subset in ("harmful", "harmless") for b in monitor.probe_batches[subset])
    return {"default_probe_tokens_estimate": round(default_tokens), "token_scale": default_tokens / tokens,
            "prompt_scale": (counts["harmful"] + counts["harmless"]) / prompts}


def _bare_forward(model, monitor, device: str):
    def run():
        with torch.inference_mode():
            for batches in monitor.probe_batches.values():
                for b in batches:
                    model(input_ids=b.input_ids.to(device), attention_mask=b.attention_mask.to(device))
    return run


def measure_evaluation(fx: Fixture, s: ShapeBenchSettings) -> tuple[dict, object]:
    """The callback's work: start (reference reading, once), one evaluation with generation
    (the cadence's first), then plain evaluations against the bare probe forward."""
    monitor = _monitor(fx, s, probes=s.probes)
    with PeakMemory(s.device) as start_memory:
        start_s = _timed(lambda: monitor.start(fx.model, fx.tokenizer), s.device)
    with PeakMemory(s.device) as eval_memory:
        first = monitor.evaluate(fx.model, 0)
        reports = []
        evaluation_s = _fastest(lambda: reports.append(monitor.evaluate(fx.model, 1)), s.repeats, s.device)
    forward_s = _fastest(_bare_forward(fx.model, monitor, s.device), s.repeats, s.device)
    generation_s = first.timings.get("generation", 0.0)
    every = monitor.config.refusal_score_every
    return {
        "probe_tokens": probe_tokens(monitor),
        "start_s": start_s,
        "evaluation_s": evaluation_s,
        "forward_s": forward_s,
        "metrics_s": min(r.timings["metrics"] + r.timings.get("kl", 0.0) for r in reports),
        "generation_s": generation_s,
        "refusal_score_every": every,
        "evaluation_amortised_s": evaluation_s + (generation_s / every if every else 0.0),
        **default_probe_scale(monitor),
        "reference_cache_mb": tensor_megabytes(monitor.reference_reading),
        "sae_mb": tensor_megabytes(list(fx.sae.parameters())),
        "eval_extra_mb": eval_memory.extra_mb,
        "start_extra_mb": start_memory.extra_mb,
    }, monitor


def measure_encode(fx: Fixture, s: ShapeBenchSettings) -> dict:
    """The monitor's encode (codes and reconstruction) vs the dense encoder matmul alone,
    interleaved so that a busy machine slows both sides alike."""
    from featuredrift.monitor.metrics import encode_batched

    x = torch.randn(s.encode_tokens, fx.sae.d_in, device=s.device)
    weight = fx.sae.encoder.weight.detach()
    encode, matmul = [], []
    with torch.inference_mode():
        encode_batched(fx.sae, x)  # warm-up
        for _ in range(max(2, s.repeats)):
            encode.append(_timed(lambda: encode_batched(fx.sae, x), s.device))
            matmul.append(_timed(lambda: x @ weight.T, s.device))
    return {"encode_s": min(encode), "matmul_s": min(matmul), "tokens": s.encode_tokens}


def measure_offline(fx: Fixture, s: ShapeBenchSettings, live_evaluation_s: float) -> dict:
    """The naive route: save the checkpoint, then a fresh process loads it and the reference
    checkpoint, reads both on the probes and computes the metrics (no generation on either side)."""
    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp)
        save_s = _timed(lambda: fx.model.save_pretrained(folder / "checkpoint"), s.device)
        fx.tokenizer.save_pretrained(folder / "checkpoint")
        fx.sae.save_to_disk(folder / "sae")
        (folder / "settings.json").write_text(json.dumps({**asdict(s), "hookpoint": fx.hookpoint}))
        started = time.perf_counter()
        done = subprocess.run([sys.executable, "-m", "featuredrift.bench.shapes", str(folder)],
                              capture_output=True, text=True, env={**os.environ, "TQDM_DISABLE": "1"})
        process_s = time.perf_counter() - started
    if done.returncode != 0:
        raise RuntimeError(f"offline route failed:\n{done.stderr[-4000:]}")
    inner = json.loads(done.stdout.strip().splitlines()[-1])
    total = save_s + process_s
    return {"save_s": save_s, "process_s": process_s, "offline_s": total, **inner, "live_evaluation_s": live_evaluation_s}


def _offline_main(folder: Path) -> dict:
    """Subprocess side of `measure_offline`: load, read reference and checkpoint, compute metrics."""
    from sparsify import SparseCoder
    from transformers import AutoModelForCausalLM, AutoTokenizer

    started = time.perf_counter()
    settings = json.loads((folder / "settings.json").read_text())
    hookpoint = settings.pop("hookpoint")
    s = ShapeBenchSettings(**settings)
    load = dict(dtype=torch.float32)
    reference = AutoModelForCausalLM.from_pretrained(folder / "checkpoint", **load).to(s.device).eval()
    current = AutoModelForCausalLM.from_pretrained(folder / "checkpoint", **load).to(s.device).eval()
    tokenizer = AutoTokenizer.from_pretrained(folder / "checkpoint")
    sae = SparseCoder.load_from_disk(folder / "sae", device=s.device)
    loaded_s = time.perf_counter() - started
    fx = Fixture(current, tokenizer, sae, hookpoint)
    monitor = _monitor(fx, s, probes=s.probes, refusal_score_every=0)
    monitor.start(current, tokenizer, reference_model=reference)
    monitor.evaluate(current, 1)
    return {"load_s": loaded_s, "read_and_metrics_s": time.perf_counter() - started - loaded_s}


def measure_scaling(fx: Fixture, s: ShapeBenchSettings, progress) -> list[dict]:
    """Evaluation cost as probe tokens, latents and hookpoints grow, one at a time from a
    small base (one probe per subset, one hookpoint, a quarter of the latents) so rows stay cheap."""
    base_probes, base_latents = 1, max(s.k, s.latents // 4)
    rows = []
    series = (
        [("probe_tokens", dict(probes=p)) for p in sorted({1, max(1, s.probes // 2), s.probes})]
        + [("latents", dict(latents=n)) for n in sorted({base_latents, max(s.k, s.latents // 2), s.latents})]
        + [("hookpoints", dict(hookpoints=h)) for h in sorted({1, min(2, s.layers), min(4, s.layers)})]
    )
    measured: dict[tuple[int, int, int], dict] = {}  # the base point is shared by the three series
    for number, (vary, change) in enumerate(series, 1):
        point = (change.get("probes", base_probes), change.get("latents", base_latents), change.get("hookpoints", 1))
        if point not in measured:
            progress(f"scaling {number}/{len(series)}: {vary} (probes {point[0]}/subset, {point[1]} latents, {point[2]} hookpoints)")
            measured[point] = _scaling_point(fx, s, *point)
        rows.append({"vary": vary, **measured[point]})
    return rows


def _scaling_point(fx: Fixture, s: ShapeBenchSettings, probes: int, latents: int, hookpoints: int) -> dict:
    """The fastest of `repeats` evaluations (after its monitor's start) at one point of the scaling table."""
    sae = fx.sae if latents == s.latents else build_sae(fx.sae.d_in, latents, s.k, s.device)
    monitor = _monitor(fx, s, probes=probes, latents_sae=sae, hookpoints=hookpoints, refusal_score_every=0)
    monitor.start(fx.model, fx.tokenizer)
    timings = min((monitor.evaluate(fx.model, 1).timings for _ in range(s.repeats)), key=lambda t: t["total"])
    return {"probe_tokens": probe_tokens(monitor), "latents": latents, "hookpoints": hookpoints,
            "evaluation_s": timings["total"], "forward_s": timings["forward"],
            "metrics_s": timings["metrics"] + timings.get("kl", 0.0)}


# ------------------------------------------------------------------------------ the bench
def run_shape_benchmark(s: ShapeBenchSettings, progress=lambda message: None) -> dict:
    """Build, measure, and derive the headline ratios (see the module docstring for how)."""
    s.check()
    shape = get_shape(s.shape)
    progress(f"building {s.shape} ({s.layers} of {shape.full_layers} layers), SAE {s.latents} latents k={s.k}")
    fx = build_fixture(s)
    progress(f"training steps ({s.measure_batch}x{s.measure_seq} tokens, extrapolated to {s.train_batch}x{s.train_seq})")
    training = measure_training_step(fx, s)
    progress(f"callback: reference and evaluations on {s.probes} probes per subset")
    evaluation, monitor = measure_evaluation(fx, s)
    progress("SAE encode against a dense matmul")
    encode = measure_encode(fx, s)
    offline = None
    if s.offline:
        progress("offline route: save the checkpoint, reload it in a fresh process, recompute")
        offline = measure_offline(fx, s, evaluation["evaluation_s"])
    scaling = measure_scaling(fx, s, progress) if s.scaling else []

    eval_cost = evaluation["evaluation_amortised_s"]
    every = evaluation["refusal_score_every"]
    # At the callback's default probe set: evaluation linear in probe tokens, generation in prompts (an upper bound).
    eval_cost_default = (evaluation["evaluation_s"] * evaluation["token_scale"]
                         + (evaluation["generation_s"] * evaluation["prompt_scale"] / every if every else 0.0))
    # The monitor's memory on top of training: its SAE and reference cache stay resident; an
    # evaluation's transient counts only where it exceeds training's own transient headroom.
    persistent_mb = evaluation["reference_cache_mb"] + evaluation["sae_mb"]
    train_transient = training["train_peak_mb"] - training["train_resident_mb"]
    peak_with = training["train_peak_mb"] + persistent_mb + max(0.0, evaluation["eval_extra_mb"] - train_transient)
    results = {
        "callback_share": eval_cost / (s.eval_every * training["step_s"] + eval_cost),
        "callback_share_default_probes": eval_cost_default / (s.eval_every * training["step_s"] + eval_cost_default),
        "evaluation_over_forward": evaluation["evaluation_s"] / evaluation["forward_s"],
        "encode_over_matmul": encode["encode_s"] / encode["matmul_s"],
        "reference_cache_mb": evaluation["reference_cache_mb"],
        "peak_memory_ratio": peak_with / training["train_peak_mb"],
        "offline_over_live": offline["offline_s"] / evaluation["evaluation_s"] if offline else float("nan"),
        "shape": {"name": shape.name, "hidden": shape.hidden, "vocab": shape.vocab, "layers": s.layers,
                  "full_layers": shape.full_layers, "latents": s.latents, "k": s.k, "device": s.device,
                  "hookpoint": fx.hookpoint},
        "settings": asdict(s),
        "training": training,
        "evaluation": evaluation,
        "encode": encode,
        "offline": offline,
        "memory": {"persistent_mb": persistent_mb, "peak_with_mb": peak_with, "peak_without_mb": training["train_peak_mb"]},
        "scaling": scaling,
        "notes": [
            f"training step: forward+backward timed at {s.measure_batch}x{s.measure_seq} and {s.measure_batch}x{max(1, s.measure_seq // 2)} "
            f"tokens, fitted as fixed + per-token cost, extrapolated to {s.train_batch}x{s.train_seq}, plus the AdamW update",
            f"callback_share = eval / (eval_every x step + eval) at eval_every={s.eval_every}; eval includes generation "
            f"amortised over refusal_score_every={evaluation['refusal_score_every']}",
            f"callback_share_default_probes: the same at the callback's default probe set (about "
            f"{evaluation['default_probe_tokens_estimate']} tokens), evaluation scaled by probe tokens and generation by prompts",
            f"depth {s.layers} of {shape.full_layers} layers: forward and training step both shrink with depth; SAE and metrics do not",
            "peak memory: training peak at the measured step size (smaller than the realistic step, so the ratio is an upper bound)",
            f"reference cache for this probe set ({evaluation['probe_tokens']} tokens); its log-prob part grows with probe "
            "positions up to the monitor's kl_max_positions",
        ],
    }
    if not s.offline:
        results["notes"].append("offline route skipped (--no-offline)")
    results["targets"] = {key: {"op": op, "bound": bound, "source": source, "met": met}
                          for (key, (op, bound, source)), met in zip(TARGETS.items(), target_verdicts(results).values(), strict=True)}
    del monitor
    return results


def print_shape_benchmark(results: dict, console=None) -> None:
    from rich.console import Console
    from rich.table import Table

    console = console or Console()
    shape, t, e, c = results["shape"], results["training"], results["evaluation"], results["encode"]
    table = Table(title=f"featuredrift bench --shape {shape['name']} ({shape['layers']}/{shape['full_layers']} layers, "
                        f"{shape['latents']} latents, {shape['device']})")
    for column, justify in (("measurement", "left"), ("value", "right"), ("target", "right")):
        table.add_column(column, justify=justify)

    def verdict(key: str) -> str:
        target = results["targets"][key]
        mark = "[green]met[/]" if target["met"] else "[red]missed[/]"
        bound = f"{target['bound']:.0%}" if key.startswith("callback_share") else f"{target['bound']:g}"
        return f"{target['op']} {bound}  {mark}"

    off = results["offline"]
    table.add_row(f"time inside the callback / training (every {results['settings']['eval_every']} steps)",
                  f"{results['callback_share']:.1%}  ({e['evaluation_amortised_s']:.2f}s per eval, step {t['step_s']:.2f}s)",
                  verdict("callback_share"))
    table.add_row(f"  the same at the default probe set (~{e['default_probe_tokens_estimate']} tokens, extrapolated)",
                  f"{results['callback_share_default_probes']:.1%}", verdict("callback_share_default_probes"))
    table.add_row("evaluation / bare probe forward",
                  f"{results['evaluation_over_forward']:.2f}×  ({e['evaluation_s']:.2f}s vs {e['forward_s']:.2f}s, "
                  f"{e['probe_tokens']} tokens)", verdict("evaluation_over_forward"))
    table.add_row("SAE encode / dense matmul of the same shape",
                  f"{results['encode_over_matmul']:.2f}×  ({c['encode_s'] * 1e3:.0f} ms vs {c['matmul_s'] * 1e3:.0f} ms)",
                  verdict("encode_over_matmul"))
    table.add_row("reference cache", f"{results['reference_cache_mb']:.1f} MB", "—")
    table.add_row("peak memory with / without the callback", f"{results['peak_memory_ratio']:.2f}×  "
                  f"({results['memory']['peak_with_mb']:.0f} MB vs {results['memory']['peak_without_mb']:.0f} MB)",
                  verdict("peak_memory_ratio"))
    table.add_row("offline route / live evaluation",
                  f"{results['offline_over_live']:.2f}×  ({off['offline_s']:.1f}s vs {e['evaluation_s']:.2f}s)" if off else "skipped",
                  verdict("offline_over_live") if off else "—")
    console.print(table)
    if results["scaling"]:
        scaling = Table(title="evaluation cost scaling")
        for column in ("vary", "probe tokens", "latents", "hookpoints", "evaluation s", "forward s", "metrics s"):
            scaling.add_column(column, justify="left" if column == "vary" else "right")
        for row in results["scaling"]:
            scaling.add_row(row["vary"], str(row["probe_tokens"]), str(row["latents"]), str(row["hookpoints"]),
                            f"{row['evaluation_s']:.2f}", f"{row['forward_s']:.2f}", f"{row['metrics_s']:.2f}")
        console.print(scaling)
    for note in results["notes"]:
        console.print(f"[dim]· {note}[/]")


if __name__ == "__main__":  # subprocess entry point of `measure_offline`
    print(json.dumps(_offline_main(Path(sys.argv[1]))))
