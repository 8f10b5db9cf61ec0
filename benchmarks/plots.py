"""PNG plots of benchmarks/results.json for docs/benchmarks.md.

Run: .venv/bin/python benchmarks/plots.py [--results benchmarks/results.json] [--out docs/img]

Each plot is made from one entry of the results file (written by the benchmark scripts with
``--record``, or transcribed from a run's printed output) and is titled with its date and commit.
Rerun after a benchmark records new figures; the page shows the PNGs as they are committed.
"""

from __future__ import annotations

import argparse
import json
import textwrap
from collections.abc import Callable
from pathlib import Path
from typing import Any

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt

HERE = Path(__file__).resolve().parent
Entry = dict[str, Any]


def _title(ax: Any, text: str, entry: Entry) -> None:
    ax.set_title(f"{text}\n{entry['date']}, commit {entry['commit']}", fontsize=10)


def _label_bars(ax: Any, bars: Any, fmt: str) -> None:
    for bar in bars:
        height = bar.get_height()
        if height:
            ax.annotate(fmt.format(height), (bar.get_x() + bar.get_width() / 2, height), ha="center",
                        va="bottom", fontsize=8, xytext=(0, 2), textcoords="offset points")


def _hbar(ax: Any, labels: list[str], values: list[float], fmt: str, color: str, label: str) -> None:
    bars = ax.barh(labels, values, color=color, label=label)
    for bar, value in zip(bars, values, strict=True):
        ax.annotate(fmt.format(value), (value, bar.get_y() + bar.get_height() / 2), va="center",
                    fontsize=8, xytext=(3, 0), textcoords="offset points")
    ax.invert_yaxis()
    _headroom(ax, max(values))
    _legend_below(ax)


def _headroom(ax: Any, biggest: float) -> None:
    """Room right of the longest bar for its value label."""
    left, _ = ax.get_xlim()
    ax.set_xlim(left, biggest * (4 if ax.get_xscale() == "log" else 1.18))


def _legend_below(ax: Any, **kwargs: Any) -> None:
    ax.legend(loc="upper center", bbox_to_anchor=(0.5, -0.2), ncol=2, fontsize=8, frameon=False, **kwargs)


def save_load(results: dict[str, Entry]) -> Any:
    save, load = results["save_load"], results["load_warm"]
    fig, (left, right) = plt.subplots(1, 2, figsize=(11, 3.8))
    rows = save["rows"]
    _hbar(left, [r["method"] for r in rows], [r["save_gbs"] for r in rows], "{:.2f}", "tab:blue",
          "durable save (fsync)")
    left.set_xlabel("save throughput (GB/s, higher is better)")
    _title(left, "Save a 1 GiB state", save)
    rows = load["rows"]
    right.set_xscale("log")
    _hbar(right, [r["method"] for r in rows], [r["load_gbs"] for r in rows], "{:.1f}", "tab:green",
          "load from the page cache")
    right.set_xlabel("load throughput (GB/s, log scale, higher is better)")
    _title(right, "Load a 1 GiB state", load)
    return fig


def stall(results: dict[str, Entry]) -> Any:
    entry = results["save_stall"]
    rows = entry["rows"]
    fig, ax = plt.subplots(figsize=(8, 3.8))
    async_ = ["async" in r["method"] for r in rows]
    colors = ["tab:green" if a else "tab:red" for a in async_]
    bars = ax.barh([r["method"] for r in rows], [r["stall_s"] for r in rows], color=colors)
    for bar, r in zip(bars, rows, strict=True):
        ax.annotate(f"{r['stall_s']:.3f} s", (r["stall_s"], bar.get_y() + bar.get_height() / 2), va="center",
                    fontsize=8, xytext=(3, 0), textcoords="offset points")
    ax.invert_yaxis()
    ax.set_xscale("log")
    _headroom(ax, max(r["stall_s"] for r in rows))
    ax.set_xlabel("training stopped per save of a 1 GiB state (s, log scale, lower is better)")
    from matplotlib.patches import Patch
    _legend_below(ax, handles=[Patch(color="tab:red", label="synchronous save"),
                               Patch(color="tab:green", label="background (async) save")])
    _title(ax, "How long one save stops training", entry)
    return fig


def cold_load(results: dict[str, Entry]) -> Any:
    entry = results["cold_load"]
    rows = entry["rows"]
    fig, ax = plt.subplots(figsize=(9, 3.8))
    labels = [r["method"] for r in rows]
    y = range(len(rows))
    h = 0.38
    cold = ax.barh([i - h / 2 for i in y], [r["cold_s"] for r in rows], h, color="tab:blue",
                   label="cold (page cache dropped)")
    warm = ax.barh([i + h / 2 for i in y], [r["warm_s"] for r in rows], h, color="tab:orange",
                   label="warm (in the page cache)")
    for bars in (cold, warm):
        for bar in bars:
            ax.annotate(f"{bar.get_width():.3f}", (bar.get_width(), bar.get_y() + bar.get_height() / 2),
                        va="center", fontsize=7, xytext=(3, 0), textcoords="offset points")
    ax.set_yticks(list(y), labels, fontsize=8)
    ax.invert_yaxis()
    _headroom(ax, max(r["cold_s"] for r in rows))
    ax.set_xlabel("time to load 0.94 GiB (s, lower is better)")
    _legend_below(ax)
    _title(ax, "Load a 0.94 GiB model + Adam state", entry)
    return fig


def _grouped(ax: Any, labels: list[str], series: dict[str, list[float | None]], fmt: str) -> None:
    width = 0.8 / len(series)
    for i, (name, values) in enumerate(series.items()):
        xs = [x + (i - (len(series) - 1) / 2) * width for x in range(len(labels))]
        bars = ax.bar(xs, [v or 0 for v in values], width, label=name)
        _label_bars(ax, bars, fmt)
    ax.set_xticks(range(len(labels)), labels, fontsize=8)
    biggest = max(v or 0 for values in series.values() for v in values)
    ax.set_ylim(0, biggest * 1.15)
    _legend_below(ax)


def mindspore(results: dict[str, Entry]) -> Any:
    entry = results["mindspore_io"]
    rows = entry["rows"]
    fig, ax = plt.subplots(figsize=(8, 3.8))
    _grouped(ax, [r["method"] for r in rows], {"save": [r["save_s"] for r in rows],
                                               "load": [r["load_s"] for r in rows]}, "{:.2f}")
    ax.set_ylabel("seconds (lower is better)")
    _title(ax, "A 303 MB MindSpore .ckpt: save and load", entry)
    return fig


def distributed(results: dict[str, Entry]) -> Any:
    entry = results["distributed_save"]
    rows = entry["rows"]
    fig, ax = plt.subplots(figsize=(7, 3.8))
    ranks = [r["ranks"] for r in rows]
    for key, name, marker in [("torchresume_s", "torchresume", "o"), ("dcp_s", "DCP FileSystemWriter", "s"),
                              ("gather_torch_save_s", "gather + torch.save", "^")]:
        ax.plot(ranks, [r[key] for r in rows], marker=marker, label=name)
    ax.set_xticks(ranks)
    ax.set_xlabel("ranks (torchrun, gloo, CPU)")
    ax.set_ylabel("save of 1 GiB, slowest rank (s)")
    ax.set_ylim(bottom=0)
    ax.legend(fontsize=8)
    _title(ax, "Sharded save of a 1 GiB state", entry)
    return fig


def distributed_scale(results: dict[str, Entry]) -> Any:
    entry = results["distributed_scale"]
    rows = [r for r in entry["rows"] if r["case"] == "small"]
    fig, axes = plt.subplots(1, 3, figsize=(12, 3.8))

    def series(method: str, op: str, value: Callable[[Entry], float]) -> tuple[list[int], list[float]]:
        picked = sorted((r["ranks"], value(r)) for r in rows if r["method"] == method and r["op"] == op)
        return [x for x, _ in picked], [y for _, y in picked]
    styles = {"torchresume": ("o", "tab:blue"), "dcp": ("s", "tab:orange")}
    panels = [("seconds, slowest rank", lambda r: r["s"], ("save", "restore")),
              ("rank 0 payload KiB per save (sent + received)",
               lambda r: (r["r0_sent"] + r["r0_received"]) / 1024, ("save",)),
              ("KiB read per rank on restore (most)", lambda r: r["read_max"] / 1024, ("restore",))]
    for ax, (label, value, ops) in zip(axes, panels, strict=True):
        for method, (marker, color) in styles.items():
            for op in ops:
                xs, ys = series(method, op, value)
                ax.plot(xs, ys, marker=marker, color=color, linestyle="-" if op == "save" else "--",
                        label=f"{'DCP FileSystem' if method == 'dcp' else method} {op}")
        ax.set_xscale("log", base=2)
        ax.set_xticks(sorted({r["ranks"] for r in rows}), [str(x) for x in sorted({r["ranks"] for r in rows})])
        ax.set_xlabel("ranks (torchrun, gloo, CPU)")
        ax.set_ylabel(label, fontsize=8)
        ax.set_ylim(bottom=0)
        ax.legend(fontsize=7)
    fig.suptitle(f"Many small replicated tensors by world size: torchresume vs DCP\n{entry['date']}, "
                 f"commit {entry['commit']}", fontsize=10)
    return fig


def s3(results: dict[str, Entry]) -> Any:
    entry = results["s3_throughput"]
    rows = entry["rows"]
    fig, ax = plt.subplots(figsize=(7, 3.8))
    _grouped(ax, [r["server"] for r in rows], {"upload": [r["upload_mbs"] for r in rows],
                                               "download (verified)": [r["download_mbs"] for r in rows]}, "{:.0f}")
    ax.set_ylabel("MB/s (higher is better)")
    _title(ax, "S3 against rclone serve s3 on 127.0.0.1", entry)
    return fig


def pacing(results: dict[str, Entry]) -> Any:
    entry = results["write_pacing"]
    rows = entry["rows"]
    fig, ax = plt.subplots(figsize=(8, 3.8))
    _grouped(ax, [r["requests"] for r in rows], {"training step time during the write (x)": [
        r["step_slowdown"] for r in rows], "hypervisor steal per GiB (CPU-s)": [r["steal_cpu_s"] for r in rows]},
        "{:.2f}")
    ax.axhline(1.0, color="grey", linewidth=0.8, linestyle="--")
    ax.set_ylabel("x slower / CPU-seconds")
    _title(ax, "A 1 GiB background write at each request size and rate", entry)
    return fig


PLOTS: dict[str, Callable[[dict[str, Entry]], Any]] = {
    "save_load.png": save_load, "stall.png": stall, "cold_load.png": cold_load, "mindspore.png": mindspore,
    "distributed.png": distributed, "s3.png": s3, "write_pacing.png": pacing,
    "distributed_scale.png": distributed_scale,
}


def main(argv: list[str] | None = None) -> list[Path]:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--results", default=str(HERE / "results.json"))
    parser.add_argument("--out", default=str(HERE.parent / "docs" / "img"))
    args = parser.parse_args(argv)
    results = json.loads(Path(args.results).read_text(encoding="utf-8"))
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    written = []
    for name, make in PLOTS.items():
        fig = make(results)
        note = textwrap.fill("machine: " + results[_SOURCE[name]]["machine"], int(fig.get_figwidth() * 19))
        fig.text(0.01, 0.01, note, fontsize=6, color="grey")
        fig.tight_layout(rect=(0, 0.03 + 0.025 * note.count("\n"), 1, 1))
        fig.savefig(out / name, dpi=110)
        plt.close(fig)
        written.append(out / name)
        print(f"wrote {out / name}")
    return written


_SOURCE = {"save_load.png": "save_load", "stall.png": "save_stall", "cold_load.png": "cold_load",
           "mindspore.png": "mindspore_io", "distributed.png": "distributed_save", "s3.png": "s3_throughput",
           "write_pacing.png": "write_pacing", "distributed_scale.png": "distributed_scale"}


if __name__ == "__main__":
    main()
