"""The demo's report: the paper-style table (printed and written as results.md), results.json
and the plots (scaling curve, training curves)."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np

from grm_jax.atomic import atomic_write_text


def _pct(x) -> str:
    return "n/a" if x is None else f"{100 * x:.1f}"


def table(results: dict) -> str:
    """Markdown tables of the measured results."""
    g = results.get("greedy", {})
    vote = {r["k"]: r["accuracy"] for r in results.get("voting", [])}
    meta = {r["k"]: r["accuracy"] for r in results.get("meta_voting", [])}
    K = max(vote) if vote else None
    lines = ["| Judge (held-out items, accuracy %: the right response strictly on top) | Acc |",
             "|---|---:|"]
    rows = [("LLM-as-judge (pretrained on the same teacher data, greedy)", g.get("llm_as_judge", {}).get("accuracy")),
            ("Scalar Bradley-Terry RM (pretrained LM + value head, same train items)",
             results.get("scalar_rm", {}).get("accuracy")),
            ("GRM pretrained (greedy)", g.get("pretrained", {}).get("accuracy")),
            ("GRM + RFT (greedy)", g.get("rft", {}).get("accuracy")),
            ("GRM + RFT + GRPO (greedy)", g.get("grpo", {}).get("accuracy"))]
    for k in (8, K):
        if k in vote:
            rows.append((f"GRM + RFT + GRPO, Voting@{k}", vote[k]))
            rows.append((f"GRM + RFT + GRPO, MetaRM@{k}", meta.get(k)))
    lines += [f"| {name} | {_pct(v)} |" for name, v in dict.fromkeys(rows)]
    if vote:
        ks = sorted(vote)
        lines += ["", "| k | " + " | ".join(map(str, ks)) + " |", "|---|" + "---:|" * len(ks),
                  "| Voting@k | " + " | ".join(_pct(vote[k]) for k in ks) + " |",
                  "| MetaRM@k | " + " | ".join(_pct(meta.get(k)) for k in ks) + " |"]
    e = results.get("endogenous")
    if e:
        lines += ["", "| Endogenous reward of the pretrained LM | % |", "|---|---:|",
                  f"| picks the right response (held-out items) | {_pct(e['accuracy'])} |",
                  f"| chance (1/n averaged) | {_pct(e['chance'])} |"]
        for name, v in e["prefers_plus_one"].items():
            lines.append(f"| prefers 'result + 1' over the right result, {name} | {_pct(v)} |")
        t = e.get("task_accuracy")
        if t:
            lines += [f"| task accuracy before RL on its own endogenous reward (T=1 samples / greedy) | "
                      f"{_pct(t['before']['sampled'])} / {_pct(t['before']['greedy'])} |",
                      f"| task accuracy after (T=1 samples / greedy) | "
                      f"{_pct(t['after']['sampled'])} / {_pct(t['after']['greedy'])} |"]
    x = results.get("export", {})
    if "max_abs_logits_diff" in x:
        lines += ["", f"HF export reloaded with transformers: max |logits diff| = {x['max_abs_logits_diff']:.2e}"]
    elif "parity" in x:
        lines += ["", f"HF export: {x['parity']}"]
    if "seconds" in results:
        lines.append(f"Wall time: {results['seconds']:.0f} s")
    return "\n".join(lines)


def _save_png(fig, path: Path) -> None:
    """Writes the figure to a temporary file, then renames it into place."""
    import matplotlib.pyplot as plt

    tmp = path.parent / f".{path.name}.tmp.png"
    fig.savefig(tmp, format="png")
    plt.close(fig)
    tmp.replace(path)


def _training_plot(demo, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from grm_jax.demo.run import _read_metrics

    panels = [("pretrain: loss", _read_metrics(demo.out / "pretrain"), "loss"),
              ("RFT SFT: loss", _read_metrics(demo.out / "rft" / "sft"), "loss"),
              ("GRPO (Eq. 10 reward): mean reward", _read_metrics(demo.out / "grpo"), "reward_mean"),
              ("GRPO on own endogenous reward: mean R", _read_metrics(demo.out / "endogenous_grpo"), "reward_mean"),
              ("meta RM: BCE loss", getattr(demo, "meta_history", []), "loss"),
              ("scalar BT RM: loss", getattr(demo, "scalar_history", []), "loss")]
    fig, axes = plt.subplots(2, 3, figsize=(11, 5.5), dpi=110)
    for ax, (title, rows, key) in zip(axes.flat, panels):
        ys = [r[key] for r in rows if key in r]
        ax.plot(np.arange(1, len(ys) + 1), ys, lw=1)
        ax.set_title(title, fontsize=9)
        ax.set_xlabel("step", fontsize=8)
        ax.grid(alpha=0.3)
    fig.tight_layout()
    _save_png(fig, path)


def _scaling_plot(results: dict, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(5, 3.5), dpi=120)
    for key, label in (("voting", "Voting@k"), ("meta_voting", "MetaRM@k")):
        rows = results.get(key, [])
        ax.plot([r["k"] for r in rows], [100 * r["accuracy"] for r in rows], marker="o", label=label)
    for name, style in (("grpo", ":"), ("rft", "--")):
        acc = results.get("greedy", {}).get(name, {}).get("accuracy")
        if acc is not None:
            ax.axhline(100 * acc, ls=style, color="gray", lw=1, label=f"{name.upper()} greedy")
    ks = [r["k"] for r in results.get("voting", [])]
    ax.set_xscale("log", base=2)
    ax.set_xticks(ks, [str(k) for k in ks])
    ax.set_xlabel("k (samples voted)")
    ax.set_ylabel("held-out accuracy (%)")
    ax.set_title("Inference-time scaling of the demo GRM", fontsize=9)
    ax.legend(fontsize=7)
    ax.grid(alpha=0.3)
    fig.tight_layout()
    _save_png(fig, path)


def write_report(demo) -> str:
    text = table(demo.results)
    _scaling_plot(demo.results, demo.out / "scaling.png")
    _training_plot(demo, demo.out / "training.png")
    atomic_write_text(demo.out / "results.md", "# grm-jax demo results\n\n" + text + "\n")
    atomic_write_text(demo.out / "results.json", json.dumps(demo.results, indent=2) + "\n")
    return text


def _rows(r: dict) -> dict:
    """The headline figures of one run, by name."""
    g = r.get("greedy", {})
    vote = {x["k"]: x["accuracy"] for x in r.get("voting", [])}
    meta = {x["k"]: x["accuracy"] for x in r.get("meta_voting", [])}
    e = r.get("endogenous", {})
    out = {"LLM-as-judge (greedy)": g.get("llm_as_judge", {}).get("accuracy"),
           "Scalar Bradley-Terry RM": r.get("scalar_rm", {}).get("accuracy"),
           "GRM pretrained (greedy)": g.get("pretrained", {}).get("accuracy"),
           "GRM + RFT (greedy)": g.get("rft", {}).get("accuracy"),
           "GRM + RFT + GRPO (greedy)": g.get("grpo", {}).get("accuracy")}
    for k in sorted(vote):
        out[f"Voting@{k}"] = vote[k]
    for k in sorted(meta):
        out[f"MetaRM@{k}"] = meta[k]
    if e:
        out["Endogenous reward: picks the right response"] = e["accuracy"]
        out["Endogenous reward: chance"] = e["chance"]
        for name, v in e["prefers_plus_one"].items():
            out[f"Endogenous reward prefers 'result + 1', {name}"] = v
        t = e.get("task_accuracy", {})
        for when in ("before", "after"):
            if when in t:
                out[f"Task accuracy {when} RL on own endogenous reward (T=1 samples)"] = t[when]["sampled"]
                out[f"Task accuracy {when} RL on own endogenous reward (greedy)"] = t[when]["greedy"]
    return out


def mean_table(runs: list[dict]) -> str:
    """Markdown: each headline figure averaged over runs (seeds), with the per-run values."""
    per = [_rows(r) for r in runs]
    seeds = [r.get("config", {}).get("seed") for r in runs]
    lines = [f"| Held-out accuracy % (mean of {len(runs)} seeds) | mean | " +
             " | ".join(f"seed {s}" for s in seeds) + " |", "|---|---:|" + "---:|" * len(runs)]
    for name in per[0]:
        vals = [p.get(name) for p in per]
        if any(v is None for v in vals):
            continue
        lines.append(f"| {name} | {_pct(float(np.mean(vals)))} | " + " | ".join(_pct(v) for v in vals) + " |")
    secs = [r.get("seconds") for r in runs]
    if all(secs):
        lines.append(f"| wall time (s) | {np.mean(secs):.0f} | " + " | ".join(f"{s:.0f}" for s in secs) + " |")
    return "\n".join(lines)


if __name__ == "__main__":  # python -m grm_jax.demo.report RUN_DIR [RUN_DIR ...]
    import sys

    if len(sys.argv) < 2:
        sys.exit("usage: python -m grm_jax.demo.report RUN_DIR [RUN_DIR ...]  (runs of grm-jax demo)")
    print(mean_table([json.loads((Path(d) / "results.json").read_text()) for d in sys.argv[1:]]))
