"""The report's plots (matplotlib), as base64 PNGs to embed in the page."""

from __future__ import annotations

import base64
import io

MAIN_COLOR, SECOND_COLOR, WARN_COLOR = "#1f77b4", "#ff7f0e", "#d62728"


def plots(summary: dict) -> dict[str, str]:
    """Title -> base64 PNG for each plot the run has data for."""
    import matplotlib.pyplot as plt

    encoded = {}
    for title, fig in figures(summary).items():
        fig.tight_layout()
        buffer = io.BytesIO()
        fig.savefig(buffer, format="png", dpi=110)
        plt.close(fig)
        encoded[title] = base64.b64encode(buffer.getvalue()).decode()
    return encoded


def figures(summary: dict) -> dict:
    """Title -> matplotlib figure for each plot the run has data for."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    made: dict = {}
    curve = summary["step_curve"]
    if curve["step"]:
        fig, ax = plt.subplots(figsize=(5.2, 3.2))
        ax.plot(curve["step"], curve["frame_match"], color=MAIN_COLOR, marker=".", linewidth=2)
        ax.set(xlabel="step index", ylabel="frame match %", ylim=(-2, 102),
               title="Accuracy vs step index")
        made["Accuracy vs step index"] = fig
    if summary["by_length"]:
        rows = summary["by_length"]
        fig, ax = plt.subplots(figsize=(5.2, 3.2))
        x = range(len(rows))
        ax.bar([i - 0.27 for i in x], [r["frame_match"] or 0 for r in rows], 0.27,
               color=MAIN_COLOR, label="frame match")
        ax.bar(list(x), [r["output_pass1"] for r in rows], 0.27, color=SECOND_COLOR,
               label="output pass@1")
        ax.bar([i + 0.27 for i in x], [r["truncated"] for r in rows], 0.27, color=WARN_COLOR,
               label="truncated")
        ax.set_xticks(list(x), [f"{r['bucket']}\n({r['traces']})" for r in rows])
        ax.set(xlabel="real trace length in frames (traces)", ylabel="%", ylim=(0, 105),
               title="Accuracy vs trace length")
        ax.legend(fontsize=7)
        made["Accuracy vs trace length"] = fig
    typed = summary["by_value_type"]
    if typed:
        fig, ax = plt.subplots(figsize=(5.2, 3.2))
        names = list(typed)
        values = [typed[k]["value"] for k in names]
        errors = [[v - typed[k]["low"] for k, v in zip(names, values)],
                  [typed[k]["high"] - v for k, v in zip(names, values)]]
        # n in the label, where a bar of 0 cannot hide it
        ax.barh([f"{k} (n={typed[k]['n']})" for k in names], values, xerr=errors,
                color=MAIN_COLOR, capsize=3)
        ax.set(xlabel="changed values right % (95% CI)", xlim=(0, 105),
               title="Accuracy by value type")
        ax.invert_yaxis()
        made["Accuracy by value type"] = fig
    divergence = summary["divergence"]
    if divergence["index"]:
        fig, ax = plt.subplots(figsize=(5.2, 3.2))
        top = max(divergence["index"])
        ax.hist(divergence["index"], bins=range(0, top + 2), color=MAIN_COLOR, align="left")
        ax.set(xlabel="first divergence (step index)", ylabel="traces",
               title=f"First divergence ({divergence['exact']} "
                     f"{'trace' if divergence['exact'] == 1 else 'traces'} exact, not shown)")
        made["First divergence"] = fig
    return made
