"""The demo's report: the paper-style table (printed and written as results.md), results.json
and the plots (scaling curve, training curves)."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np

from grm_jax.atomic import atomic_write_text
from grm_jax.demo.common import format_se, read_metrics


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
    val = results.get("validation")
    if val:  # for choosing settings (val_items); no claim reads these
        lines += ["", "| GRM, greedy, on the validation items (not held-out; for searches) | Acc |", "|---|---:|"]
        lines += [f"| {name} | {_pct(v.get('accuracy'))} |" for name, v in val.items()]
    vs = results.get("validation_scaling")
    if vs:  # likewise for searches only
        ks = [r["k"] for r in vs["voting"]]
        lines += ["", "| k, on the validation items (for searches) | " + " | ".join(map(str, ks)) + " |",
                  "|---|" + "---:|" * len(ks),
                  "| Voting@k | " + " | ".join(_pct(r["accuracy"]) for r in vs["voting"]) + " |",
                  "| MetaRM@k | " + " | ".join(_pct(r["accuracy"]) for r in vs["meta_voting"]) + " |"]
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
    runs = results.get("grpo_runs", {})
    if runs:
        lines += ["", "| GRPO run | mean reward, first quarter of steps | last quarter | rise ± standard error |",
                  "|---|---:|---:|---:|"]
        for name, r in runs.items():
            lines.append(f"| {name} | {r['first_quarter']:+.3f} | {r['last_quarter']:+.3f} | "
                         f"{r['rise']:+.3f} ± {format_se(r['rise_se'])} |")
    checked = claims(results)
    if checked:
        lines += ["", "| Claim | holds |", "|---|---|"]
        lines += [f"| {name} | {'yes' if ok else 'no'} |" for name, ok in checked.items()]
    t = results.get("timings", {})
    if t.get("stages"):
        lines += ["", "| Stage | seconds |", "|---|---:|"]
        lines += [f"| {name} | {secs:.1f} |" for name, secs in t["stages"].items()]
        if "total_s" in t:
            lines.append(f"| total | {t['total_s']:.1f} |")
    return "\n".join(lines)


def claims(results: dict) -> dict[str, bool]:
    """The method's claims (issue 15 / PAPERS.md "the shape to reproduce"), checked on one run's
    results: {claim: holds}. A claim whose figures are missing is left out."""
    g = {k: v.get("accuracy") for k, v in results.get("greedy", {}).items()}
    vote = {r["k"]: r["accuracy"] for r in results.get("voting", [])}
    meta = {r["k"]: r["accuracy"] for r in results.get("meta_voting", [])}
    out = {}
    if g.get("rft") is not None and g.get("pretrained") is not None:
        out["RFT > pretrained (greedy)"] = g["rft"] > g["pretrained"]
    if g.get("grpo") is not None and g.get("rft") is not None:
        out["GRPO > RFT (greedy)"] = g["grpo"] > g["rft"]
    r = results.get("grpo_runs", {}).get("grpo")
    if r:
        out["GRPO reward rises: last quarter - first quarter > 2 standard errors"] = (
            r["rise_se"] is not None and r["rise"] > 2 * r["rise_se"])
    ks = sorted(vote)
    if len(ks) > 1:
        out[f"Voting@k rises with k (each k >= k/2, Voting@{ks[-1]} > Voting@1)"] = (
            all(vote[b] >= vote[a] for a, b in zip(ks, ks[1:])) and vote[ks[-1]] > vote[ks[0]])
        big = [k for k in ks if k >= 8]
        if big and all(k in meta for k in big):
            out["MetaRM@k >= Voting@k for k >= 8"] = all(meta[k] >= vote[k] for k in big)
    e = results.get("endogenous")
    if e:
        out["Endogenous reward above chance"] = e["accuracy"] > e["chance"]
        pp = list(e["prefers_plus_one"].values())
        out["System prompt steers the endogenous reward toward 'result + 1'"] = pp[1] > pp[0]
        t = e.get("task_accuracy")
        if t:
            out["RL on own endogenous reward raises sampled task accuracy"] = t["after"]["sampled"] > t["before"]["sampled"]
    return out


def _save_png(fig, path: Path) -> None:
    """Writes the figure to a temporary file, then renames it into place."""
    import matplotlib.pyplot as plt

    tmp = path.parent / f".{path.name}.tmp.png"
    fig.savefig(tmp, format="png")
    plt.close(fig)
    tmp.replace(path)


def _training_plot(run, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    panels = [("pretrain: loss", read_metrics(run.out / "pretrain"), "loss"),
              ("RFT SFT: loss", read_metrics(run.out / "rft" / "sft"), "loss"),
              ("GRPO (Eq. 10 reward): mean reward", read_metrics(run.out / "grpo"), "reward_mean"),
              ("GRPO on own endogenous reward: mean R", read_metrics(run.out / "endogenous_grpo"), "reward_mean"),
              ("meta RM: BCE loss", run.histories.get("meta_rm", []), "loss"),
              ("scalar BT RM: loss", run.histories.get("scalar_rm", []), "loss")]
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


def write_report(run) -> str:
    """Writes results.md, results.json and the plots into the run folder; returns the tables."""
    text = table(run.results)
    _scaling_plot(run.results, run.out / "scaling.png")
    _training_plot(run, run.out / "training.png")
    atomic_write_text(run.out / "results.md", "# grm-jax demo results\n\n" + text + "\n")
    atomic_write_text(run.out / "results.json", json.dumps(run.results, indent=2) + "\n")
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
    for name, v in r.get("validation", {}).items():
        out[f"Validation items: GRM {name} (greedy)"] = v.get("accuracy")
    for key, label in (("voting", "Voting"), ("meta_voting", "MetaRM")):
        for x in r.get("validation_scaling", {}).get(key, []):
            out[f"Validation items: {label}@{x['k']}"] = x["accuracy"]
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


def mean_results(runs: list[dict]) -> dict:
    """The runs' figures averaged (the parts `claims` reads); a GRPO run's rise gets the standard
    error of the mean of the runs' rises."""
    def avg(xs):
        return float(np.mean(xs))

    first = runs[0]
    out: dict = {"greedy": {k: {"accuracy": avg([r["greedy"][k]["accuracy"] for r in runs])}
                            for k in first.get("greedy", {})}}
    for key in ("voting", "meta_voting"):
        if key in first:
            out[key] = [{"k": row["k"], "accuracy": avg([r[key][i]["accuracy"] for r in runs])}
                        for i, row in enumerate(first[key])]
    out["grpo_runs"] = {}
    for name in first.get("grpo_runs", {}):
        rs = [r["grpo_runs"][name] for r in runs]
        out["grpo_runs"][name] = {
            "first_quarter": avg([x["first_quarter"] for x in rs]), "last_quarter": avg([x["last_quarter"] for x in rs]),
            "rise": avg([x["rise"] for x in rs]),
            "rise_se": None if any(x["rise_se"] is None for x in rs) else
            float(np.sqrt(sum(x["rise_se"] ** 2 for x in rs)) / len(rs))}
    if "endogenous" in first:
        e = [r["endogenous"] for r in runs]
        out["endogenous"] = {"accuracy": avg([x["accuracy"] for x in e]), "chance": avg([x["chance"] for x in e]),
                             "prefers_plus_one": {k: avg([x["prefers_plus_one"][k] for x in e])
                                                  for k in e[0]["prefers_plus_one"]}}
        if "task_accuracy" in e[0]:
            out["endogenous"]["task_accuracy"] = {
                w: {m: avg([x["task_accuracy"][w][m] for x in e]) for m in ("sampled", "greedy")}
                for w in ("before", "after")}
    return out


def mean_table(runs: list[dict]) -> str:
    """Markdown: each headline figure's mean over runs (seeds), its spread (standard deviation)
    and the per-run values; then each claim checked on the mean and on every run."""
    per = [_rows(r) for r in runs]
    seeds = [r.get("config", {}).get("seed") for r in runs]
    cols = " | ".join(f"seed {s}" for s in seeds)
    lines = [f"| Held-out accuracy % ({len(runs)} seeds) | mean | spread (sd) | {cols} |",
             "|---|---:|---:|" + "---:|" * len(runs)]
    for name in per[0]:
        vals = [p.get(name) for p in per]
        if any(v is None for v in vals):
            continue
        lines.append(f"| {name} | {_pct(float(np.mean(vals)))} | {_pct(float(np.std(vals)))} | "
                     + " | ".join(_pct(v) for v in vals) + " |")
    rises = [r.get("grpo_runs", {}).get("grpo") for r in runs]
    if all(rises):
        m = mean_results(runs)["grpo_runs"]["grpo"]
        lines.append(f"| GRPO mean reward rise, last - first quarter (± se) | {m['rise']:+.3f} ± {format_se(m['rise_se'])} | | "
                     + " | ".join(f"{x['rise']:+.3f} ± {format_se(x['rise_se'])}" for x in rises) + " |")
    secs = [r.get("timings", {}).get("total_s") for r in runs]
    if all(secs):
        lines.append(f"| wall time of the stages (s) | {np.mean(secs):.0f} | | " + " | ".join(f"{s:.0f}" for s in secs) + " |")
    on_mean = claims(mean_results(runs))
    each = [claims(r) for r in runs]
    lines += ["", f"| Claim | mean of {len(runs)} | {cols} | seeds where it holds |", "|---|---|" + "---|" * len(runs) + "---:|"]
    for name, ok in on_mean.items():
        marks = [c.get(name) for c in each]
        lines.append(f"| {name} | {'yes' if ok else 'no'} | " + " | ".join('yes' if x else 'no' for x in marks)
                     + f" | {sum(bool(x) for x in marks)} of {len(runs)} |")
    return "\n".join(lines)


if __name__ == "__main__":  # python -m grm_jax.demo.report RUN_DIR [RUN_DIR ...]
    import sys

    if len(sys.argv) < 2:
        sys.exit("usage: python -m grm_jax.demo.report RUN_DIR [RUN_DIR ...]  (runs of grm-jax demo)")
    print(mean_table([json.loads((Path(d) / "results.json").read_text()) for d in sys.argv[1:]]))
