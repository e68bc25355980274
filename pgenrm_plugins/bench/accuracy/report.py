"""Writing the benchmark's report: report.json, report.md (`markdown`), the plots accuracy_vs_n.png
and accuracy_vs_k.png (`plot`), and the summary table printed at the end of a run (`print_summary`).
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
from rich.console import Console
from rich.table import Table

METHOD_NOTE = (
    "Each test row is judged twice, chosen response shown first and second. A judgement is correct when the "
    "chosen response gets the higher reward; ties and failures (no chain gave a score) stay in the denominator. "
    "Intervals: 95% bootstrap over users. In group mode the two responses never share a chain, so position "
    "cannot matter (the second order is a cache hit); pairwise mode shows both responses in one chain."
)


def _fmt_acc(entry: dict) -> str:
    if entry.get("accuracy") is None:
        return "-"
    ci = entry.get("ci95")
    return f"{entry['accuracy']:.3f} [{ci[0]:.3f}, {ci[1]:.3f}]" if ci else f"{entry['accuracy']:.3f}"


def markdown(report: dict) -> str:
    cfg = report["config"]
    lines = [
        "# Personalized pairwise accuracy", "",
        f"Data: `{report['data']}`: {report['test_rows']} test rows of {report['users']['with_test_rows']} users "
        f"({report['users']['cold_start_with_test_rows']} cold-start), {len(report['bad_rows'])} bad row(s). "
        f"Judge: `{cfg['backend']['name']}` {json.dumps(cfg['backend']['options'])}, "
        f"chains up to {cfg['sampling']['max_new_tokens']} tokens at temperature "
        f"{cfg['sampling']['temperature']}, history up to {cfg['reward']['max_history']} pairs.", "",
        report["method"], "",
        "| setting | what the judge sees | mode / reader | accuracy [95% CI] | vs no-history [95% CI] "
        "| chosen 1st / 2nd | ties | failed | criteria fallbacks / judgement | gen. tokens / judgement | judgements |",
        "|---|---|---|---|---|---|---:|---:|---:|---:|---:|",
    ]
    for name, s in report["settings"].items():
        vs = s.get("vs_no_history")
        vs_text = (f"{vs['delta']:+.3f} [{vs['ci95'][0]:+.3f}, {vs['ci95'][1]:+.3f}]"
                   if vs and vs.get("ci95") and name != "no-history" else "-")
        lines.append(
            f"| `{name}` | {s['description']} | {s['mode']} / {s['reader']} | {_fmt_acc(s)} | {vs_text} | "
            f"{s['accuracy_chosen_first']:.3f} / {s['accuracy_chosen_second']:.3f} | {s['tie']} | {s['failed']} | "
            f"{s['criteria_fallbacks_per_judgement']:.2f} | {s['generated_tokens_per_judgement']:.0f} "
            f"| {s['judgements']} |")
    if report["references"]:
        lines += ["", "Reference predictors, for scale (`truth`: they read the synthetic users' latent attributes, "
                  "not the text):", "",
                  "| predictor | reads | what it knows | accuracy [95% CI] |", "|---|---|---|---|"]
        for name, r in report["references"].items():
            lines.append(f"| `{name}` | {r.get('reads', 'truth')} | {r['description']} | {_fmt_acc(r)} |")
    groups = sorted({g for s in [*report["settings"].values(), *report["references"].values()]
                     for g in s.get("by_group", {})})
    if groups:
        lines += ["", ("By group (warm users have 3 or more train rows, cold-start users 1 or 2, "
                         "no-history users none):"), "",
                  "| setting | " + " | ".join(groups) + " |", "|---|" + "---|" * len(groups)]
        for name, s in [*report["settings"].items(), *report["references"].items()]:
            cells = [_fmt_acc(s["by_group"][g]) + f" (n={s['by_group'][g]['judgements']})"
                     if g in s["by_group"] else "-" for g in groups]
            lines.append(f"| `{name}` | " + " | ".join(cells) + " |")
    if report["bad_rows"]:
        lines += ["", "Rows not used (unknown structure), by line:", ""]
        lines += [f"- line {b['line']}: {b['error']}" for b in report["bad_rows"][:50]]
        if len(report["bad_rows"]) > 50:
            lines.append(f"- ... and {len(report['bad_rows']) - 50} more (all in report.json)")
    c = report["cache"]
    lines += ["", f"Judge cache `{c['path']}`: chains {c['chain_hits']} hit / {c['chain_misses']} new, "
              f"probability reads {c['prob_hits']} hit / {c['prob_misses']} new; "
              f"{c['generated_tokens']} tokens generated in this run; {report['seconds']} s.", ""]
    resumed = {name: rows for name, rows in report.get("resumed_rows", {}).items() if rows}
    if resumed:
        lines += ["Resumed: " + ", ".join(f"`{name}` {rows} rows" for name, rows in resumed.items())
                  + " read back from progress.jsonl (judged by an earlier run that was interrupted).", ""]
    return "\n".join(lines)


def plot(report: dict, report_dir: Path) -> list[str]:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    written = []
    settings = report["settings"]
    ind = sorted(((s["setting"]["chains"], name, s) for name, s in settings.items()
                  if s["setting"]["history"] == "user" and not s["setting"]["top_k"] and not s["setting"]["mode"]
                  and not s["setting"]["reader"]), key=lambda t: t[0])
    lines = [(name, s) for name, s in settings.items() if s["setting"]["history"] != "user"]
    lines += [(name, r) for name, r in report["references"].items()]

    def err(s):
        lo, hi = s["ci95"] or (s["accuracy"], s["accuracy"])
        return [[s["accuracy"] - lo], [hi - s["accuracy"]]]

    def baselines(ax):
        colours = plt.rcParams["axes.prop_cycle"].by_key()["color"]
        for i, (name, s) in enumerate(lines):
            colour = colours[(i + 1) % len(colours)]
            ax.axhline(s["accuracy"], ls="--", lw=1, color=colour, label=f"{name} {s['accuracy']:.3f}")
            if s.get("ci95"):
                ax.axhspan(*s["ci95"], color=colour, alpha=0.08)
        ax.axhline(0.5, ls=":", color="grey", lw=1, label="chance")
        ax.set_ylim(0, 1)
        ax.set_ylabel("pairwise accuracy (95% CI)")
        ax.legend(fontsize=7, loc="lower right")

    if ind:
        fig, ax = plt.subplots(figsize=(6.4, 4.2))
        xs = [n for n, _, _ in ind]
        ax.errorbar(xs, [s["accuracy"] for _, _, s in ind], yerr=np.hstack([err(s) for _, _, s in ind]),
                    marker="o", capsize=4, label="Ind-N (user's history)")
        ax.set_xscale("log", base=2)
        ax.set_xticks(xs, [str(x) for x in xs])
        ax.set_xlabel("N, sampled evaluation chains")
        ax.set_title("Individual-level scaling")
        baselines(ax)
        fig.tight_layout()
        fig.savefig(report_dir / "accuracy_vs_n.png", dpi=120)
        plt.close(fig)
        written.append("accuracy_vs_n.png")
    pro = [(name, s) for name, s in settings.items() if s["setting"]["top_k"]]
    if pro:
        fig, ax = plt.subplots(figsize=(6.4, 4.2))
        for n in sorted({s["setting"]["chains"] for _, s in pro}):
            pts = [(0, s) for _, _, s in ind if s["setting"]["chains"] == n]
            pts += sorted(((s["setting"]["top_k"], s) for _, s in pro if s["setting"]["chains"] == n),
                          key=lambda t: t[0])
            ax.errorbar([k for k, _ in pts], [s["accuracy"] for _, s in pts], yerr=np.hstack([err(s) for _, s in pts]),
                        marker="o", capsize=4, label=f"Ind-{n} + Pro-k")
        ax.set_xticks(sorted({0, *(s["setting"]["top_k"] for _, s in pro)}))
        ax.set_xlabel("k, prototype neighbours (0 = none)")
        ax.set_title("Prototype-level scaling")
        baselines(ax)
        fig.tight_layout()
        fig.savefig(report_dir / "accuracy_vs_k.png", dpi=120)
        plt.close(fig)
        written.append("accuracy_vs_k.png")
    return written


def write_report(report: dict, report_dir: Path) -> None:
    """report.json, report.md and the plots; each file written whole (temporary file, then rename)."""
    import os

    report_dir.mkdir(parents=True, exist_ok=True)
    report["plots"] = plot(report, report_dir)
    for name, text in (("report.json", json.dumps(report, indent=1)), ("report.md", markdown(report))):
        tmp = report_dir / f".{name}.tmp"
        tmp.write_text(text, encoding="utf-8")
        os.replace(tmp, report_dir / name)


def print_summary(report: dict, console: Console) -> None:
    table = Table(title=f"pairwise accuracy, {report['test_rows']} test rows x 2 orders", title_justify="left")
    for col in ("setting", "accuracy [95% CI]", "vs no-history", "1st / 2nd", "ties", "failed", "new chains"):
        table.add_column(col, justify="left" if col == "setting" else "right")
    for name, s in report["settings"].items():
        vs = s.get("vs_no_history")
        table.add_row(name, _fmt_acc(s), f"{vs['delta']:+.3f}" if vs and name != "no-history" else "-",
                      f"{s['accuracy_chosen_first']:.3f} / {s['accuracy_chosen_second']:.3f}", str(s["tie"]),
                      str(s["failed"]), str(s["new_chains"]))
    for name, r in report["references"].items():
        table.add_row(f"[dim]{name} ({r.get('reads', 'truth')})[/dim]", _fmt_acc(r), "-", "-", str(r["tie"]), "-", "-")
    console.print(table)
    if report["bad_rows"]:
        console.print(f"[yellow]{len(report['bad_rows'])} row(s) of {report['data']} could not be read; "
                      "listed by line in report.json and report.md[/yellow]", highlight=False, soft_wrap=True)
