"""The paper's figures from results.json, as PNG bytes (matplotlib, Agg backend)."""

from __future__ import annotations

import io


def _png(fig) -> bytes:
    import matplotlib.pyplot as plt

    buffer = io.BytesIO()
    fig.savefig(buffer, format="png", dpi=110, bbox_inches="tight")
    plt.close(fig)
    return buffer.getvalue()


def fig1_transfer(transfer: dict) -> bytes:
    """FVU bars per setting and layer, chat SAE as a star (the ceiling)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    hookpoints = list(transfer["hookpoints"])
    settings = ["B-LLM+B-Data", "B-LLM+C-Data", "C-LLM+C-Data"]
    fig, axes = plt.subplots(1, len(hookpoints), figsize=(3.4 * len(hookpoints), 3.2), squeeze=False)
    colors = ["#4c72b0", "#dd8452", "#55a868"]
    for ax, hookpoint in zip(axes[0], hookpoints, strict=True):
        row = transfer["hookpoints"][hookpoint]
        values = [row["base_sae"][s] for s in settings]
        ax.bar(range(3), values, color=colors)
        if "chat_sae" in row:
            ax.plot([2], [row["chat_sae"]["C-LLM+C-Data"]], marker="*", markersize=16, color="#e6b800",
                    markeredgecolor="black", linestyle="none", label="chat SAE")
            ax.legend(loc="upper left", fontsize=8)
        ax.set_xticks(range(3), settings, rotation=20, fontsize=8)
        ax.set_title(hookpoint)
    axes[0][0].set_ylabel("FVU")
    fig.tight_layout()
    fig.suptitle("Fig. 1: base SAE transfer (lower is better)", y=1.06)
    return _png(fig)


def fig2_interventions(interventions: dict) -> bytes:
    """Safety score under ablation (solid) and refusal score under addition (dashed) vs k."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6, 3.8))
    rows = interventions["rows"]
    colors = {"base": "#c44e52", "chat": "#4c72b0"}
    for source in ("base", "chat"):
        points = sorted((r["k"], r) for r in rows if r["source"] == source and r["safety_score"] is not None)
        if not points:
            continue
        ks = [k for k, _ in points]
        ax.plot(ks, [r["safety_score"] for _, r in points], "-o", color=colors[source], label=f"{source} features: safety (ablation)")
        ax.plot(ks, [r["refusal_score"] for _, r in points], "--s", color=colors[source], label=f"{source} features: refusal (addition)")
    for r in rows:
        if r["source"] == "true":
            ax.axhline(r["safety_score"], color="gray", linestyle="-", alpha=0.7, label="true direction: safety")
            ax.axhline(r["refusal_score"], color="gray", linestyle="--", alpha=0.7, label="true direction: refusal")
    ax.set_xscale("log", base=2)
    ax.set_xlabel("k (refusal features)")
    ax.set_ylabel("score")
    ax.set_ylim(-0.05, 1.05)
    ax.set_title(f"Fig. 2: interventions (judge: {interventions['judge']})")
    ax.legend(fontsize=7, loc="center left", bbox_to_anchor=(1.0, 0.5))
    return _png(fig)


def fig3_drift(drift: dict) -> bytes:
    """ER and IR per layer (base data, divergent tokens)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    hookpoints = list(drift["hookpoints"])
    er = [drift["hookpoints"][h]["base"]["explained_ratio"] for h in hookpoints]
    ir = [drift["hookpoints"][h]["base"]["intersection_ratio_divergent"] for h in hookpoints]
    fig, (left, right) = plt.subplots(1, 2, figsize=(8, 3.2))
    left.bar(hookpoints, [v if v is not None else 0 for v in er], color="#4c72b0")
    left.axhline(1.0, color="black", linestyle="--", linewidth=1)
    left.set_title("Explained Ratio (ER < 1: feature drift)")
    right.bar(hookpoints, [v if v is not None else 0 for v in ir], color="#55a868")
    right.set_ylim(0, 1)
    right.set_title("Intersection Ratio")
    fig.tight_layout()
    fig.suptitle("Fig. 3: feature drift metrics", y=1.06)
    return _png(fig)


def fig_steering(steering: dict) -> bytes:
    """Left: mean KL(base steered ‖ chat) at the high-KL positions vs λ, per dictionary (λ = 0 is
    the unsteered KL). Right: the hybrid's rollout share of its target continuation."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, (left, right) = plt.subplots(1, 2, figsize=(9, 3.4))
    scales = [0.0, *steering["scales"]]
    styles = {"diff_sae": ("#4c72b0", "diff-SAE top latent"), "base_sae": ("#dd8452", "base-SAE top latent"),
              "random": ("#8c8c8c", "random direction")}
    for name, summary in steering["validation"].items():
        color, label = styles.get(name, ("black", name))
        left.plot(scales, summary["mean_kl_by_scale"], "-o", color=color, label=label)
    left.set_xlabel(f"λ (× mean |x_chat − x_base| = {steering['unit']['value']:.2f})")
    left.set_ylabel("mean KL(base ‖ chat), nats")
    left.set_title("Steering the base model at its high-KL positions", fontsize=9)
    left.legend(fontsize=7)
    hybrid = steering.get("hybrid")
    if hybrid:
        names = ["base", "hybrid", "hybrid_steered", "chat"]
        shares = [hybrid["models"][n]["target_share"] or 0.0 for n in names]
        right.bar(["base", "hybrid", "hybrid\n+latent", "chat"], shares, color=["#dd8452", "#8172b3", "#4c72b0", "#55a868"])
        right.set_ylim(0, 1)
        right.set_ylabel(f"share of {hybrid['sampling']['num_rollouts']} rollouts")
        right.set_title(f"continuation {hybrid['target']!r} (post: 42% → 2%)", fontsize=9)
    else:
        right.axis("off")
    fig.tight_layout()
    return _png(fig)


def fig_dataset_steering(steering: dict) -> bytes:
    """Behaviour rate vs λ for each prompt set: the chat model with the latent subtracted (and a
    random direction), the chat model on control prompts and the base model with it added."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    datasets = steering.get("datasets", [])
    fig, axes = plt.subplots(1, max(1, len(datasets)), figsize=(4.6 * max(1, len(datasets)), 3.4), squeeze=False)
    lines = {"chat_negative": ("#4c72b0", "-o", "chat − latent"), "chat_negative_random": ("#8c8c8c", "--o", "chat − random"),
             "chat_positive": ("#c44e52", "-s", "chat + latent (control prompts)"), "base_positive": ("#dd8452", "-^", "base + latent")}
    for ax, dataset in zip(axes[0], datasets, strict=False):
        rows = dataset["steering"]
        for key, (color, style, label) in lines.items():
            points = [(r["scale"], r[key]["rate"]) for r in rows if r.get(key) is not None]
            if key == "chat_negative_random" and rows[0].get("chat_negative"):
                points = [(0.0, rows[0]["chat_negative"]["rate"]), *points]
            if points:
                ax.plot(*zip(*points, strict=True), style, color=color, label=label)
        ax.set_ylim(-0.05, 1.05)
        ax.set_xlabel("λ (× mean |x_chat − x_base|)")
        ax.set_ylabel("behaviour rate")
        ax.set_title(f"{dataset['name']}: latent {dataset['latent']}", fontsize=9)
        ax.legend(fontsize=7)
    fig.tight_layout()
    return _png(fig)
