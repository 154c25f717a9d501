#!/usr/bin/env python3
"""Draw BENCHMARKS.md's chart from benchmark results.  Standard library only.

  python3 bench/chart.py bench/results/*.jsonl --out bench/chart.svg
  python3 bench/chart.py bench/results/*.jsonl --check bench/chart.svg

Input: JSON-lines files as `run_matrix.py` writes them (one object per run, with
"impl", "config", "check" and the workload's headline figure).  For each config,
each implementation's figure is the median of its runs whose check was "ok".

Output: one SVG with a row of bars per config (twistctl, Twisted, C yardstick), each
bar the implementation's figure relative to the C yardstick of the same config, so
1.0 is the practical limit and longer is better for every workload (for figures where
lower is better, such as CPU seconds or bytes per connection, the ratio is inverted).
The scale is logarithmic: Twisted trails by 50x on some workloads and by 1.2x on others.

--check FILE regenerates the chart in memory and fails (exit 1) when FILE differs,
so a stale committed chart, or a script that no longer runs on the committed data,
shows in CI.
"""

import argparse
import json
import math
import statistics
import sys
from xml.sax.saxutils import escape

# config, headline key, unit, True when a larger figure is better.  The order and the
# keys are those of the benchmark folder's run_matrix.py.
CONFIGS = [
    ("timers-r0", "cpu_s", "s cpu", False),
    ("timers-r0.9", "cpu_s", "s cpu", False),
    ("connect", "conns_per_s", "conn/s", True),
    ("echo-k1", "mb_per_s", "MB/s", True),
    ("echo-k50", "mb_per_s", "MB/s", True),
    ("lines", "lines_per_s", "lines/s", True),
    ("lines-10m", "lines_per_s", "lines/s", True),
    ("idle", "rss_per_conn_bytes", "B/pair", False),
    ("tls-connect", "handshakes_per_s", "hs/s", True),
    ("tls-echo-k1", "mb_per_s", "MB/s", True),
    ("tls-echo-k50", "mb_per_s", "MB/s", True),
]

# The implementations in the order drawn, with their names in the legend and colours.
IMPLS = [
    ("twistctl", "twistctl", "#d9480f"),
    ("twisted", "Twisted 26.10", "#1c7ed6"),
    ("c-limit", "C yardstick", "#868e96"),
]

ROW_HEIGHT = 18
GROUP_GAP = 14
LEFT = 130
BAR_AREA = 460
RIGHT_LABEL = 150
TOP = 58


class ChartError(Exception):
    """The input cannot make a chart (no data, an unreadable line)."""


def load(paths):
    """Every run object of the given files, in order."""
    runs = []
    for path in paths:
        with open(path, encoding="utf-8") as f:
            for number, line in enumerate(f, 1):
                line = line.strip()
                if not line:
                    continue
                try:
                    runs.append(json.loads(line))
                except json.JSONDecodeError as e:
                    raise ChartError("%s:%d: not JSON: %s" % (path, number, e)) from e
    return runs


def config_of(run):
    """The matrix config a run belongs to: its "config" field, or, for results written
    without one (a workload run by hand), the config its workload and parameters give."""
    if run.get("config"):
        return run["config"]
    params = run.get("params", {})

    def param(name, fallback=None):
        return params.get(name, run.get(name, fallback))

    workload = run.get("workload")
    if workload == "timers":
        ratio = param("cancel_ratio", 0.9 if run.get("cancelled") else 0.0)
        return "timers-r0.9" if ratio else "timers-r0"
    if workload in ("connect", "idle", "tls-connect"):
        return workload
    if workload == "lines":
        return "lines-10m" if param("count", run.get("lines_counted")) == 10**7 else "lines"
    if workload in ("echo", "tls-echo"):
        k = param("connections")
        size = param("bytes", run.get("bytes_echoed"))
        suffix = "-256m" if workload == "echo" and size == 256 * 2**20 else ""
        return "%s-k%s%s" % (workload, k, suffix)
    return None


def medians(runs):
    """{(config, impl): median headline figure} over the runs whose check passed."""
    keys = {name: key for name, key, _, _ in CONFIGS}
    values = {}
    for run in runs:
        config, impl = config_of(run), run.get("impl")
        key = keys.get(config)
        if key is None or run.get("check") != "ok" or run.get("exit", 0) != 0:
            continue
        value = run.get(key)
        if isinstance(value, (int, float)) and value > 0:
            values.setdefault((config, impl), []).append(float(value))
    return {k: statistics.median(v) for k, v in values.items()}


def figure(value, unit):
    """A figure as a person reads it: 3 significant digits, thousands and millions."""
    if value >= 1e6:
        text = "%.3g M" % (value / 1e6)
    elif value >= 1000:
        text = "{:,.0f}".format(value)
    else:
        text = "%.3g" % value
    return "%s %s" % (text, unit)


def rows(table):
    """(config, unit, [(impl, value, ratio to C)]) for every config with a C figure."""
    out = []
    for config, _, unit, larger_better in CONFIGS:
        limit = table.get((config, "c-limit"))
        if limit is None:
            continue
        bars = []
        for impl, _, _ in IMPLS:
            value = table.get((config, impl))
            if value is None:
                continue
            ratio = value / limit if larger_better else limit / value
            bars.append((impl, value, ratio))
        out.append((config, unit, bars))
    if not out:
        raise ChartError("no config has a C yardstick figure to compare with")
    return out


def render(data):
    """The SVG text of the chart."""
    ratios = [r for _, _, bars in data for _, _, r in bars]
    low = 10 ** math.floor(math.log10(min(ratios + [1.0])))
    high = 10 ** math.ceil(math.log10(max(ratios + [1.0])))
    span = math.log10(high) - math.log10(low)

    def x(ratio):
        return LEFT + BAR_AREA * (math.log10(ratio) - math.log10(low)) / span

    height = TOP + sum(len(b) * ROW_HEIGHT + GROUP_GAP for _, _, b in data) + 30
    width = LEFT + BAR_AREA + RIGHT_LABEL
    colour = {impl: c for impl, _, c in IMPLS}
    out = [
        '<svg xmlns="http://www.w3.org/2000/svg" width="%d" height="%d" '
        'font-family="sans-serif" font-size="11">' % (width, height),
        '<rect width="100%" height="100%" fill="white"/>',
        '<text x="%d" y="16" font-size="13" font-weight="bold">'
        "Each implementation relative to the C yardstick (1.0; longer is better, log scale)"
        "</text>" % 8,
    ]
    for i, (impl, label, c) in enumerate(IMPLS):
        out.append('<rect x="%d" y="26" width="10" height="10" fill="%s"/>' % (LEFT + i * 170, c))
        out.append('<text x="%d" y="35">%s</text>' % (LEFT + 14 + i * 170, escape(label)))
    # Decade grid lines, the 1.0 line darker.
    decade = low
    while decade <= high * 1.0001:
        gx = x(decade)
        stroke = "#495057" if abs(decade - 1.0) < 1e-9 else "#dee2e6"
        out.append('<line x1="%.1f" y1="%d" x2="%.1f" y2="%d" stroke="%s"/>'
                   % (gx, TOP - 6, gx, height - 24, stroke))
        out.append('<text x="%.1f" y="%d" text-anchor="middle" fill="#495057">%g</text>'
                   % (gx, height - 10, decade))
        decade *= 10
    y = TOP
    for config, unit, bars in data:
        out.append('<text x="%d" y="%d" text-anchor="end" font-weight="bold">%s</text>'
                   % (LEFT - 8, y + ROW_HEIGHT * len(bars) / 2 + 4, escape(config)))
        for impl, value, ratio in bars:
            x0, x1 = x(low), x(ratio)
            out.append('<rect x="%.1f" y="%d" width="%.1f" height="%d" fill="%s">'
                       "<title>%s %s: %s (%.2fx the C yardstick)</title></rect>"
                       % (x0, y + 2, max(x1 - x0, 1.0), ROW_HEIGHT - 4, colour[impl],
                          escape(impl), escape(config), escape(figure(value, unit)), ratio))
            out.append('<text x="%.1f" y="%d">%s (%.2fx)</text>'
                       % (max(x1, x0) + 4, y + ROW_HEIGHT - 5, escape(figure(value, unit)), ratio))
            y += ROW_HEIGHT
        y += GROUP_GAP
    out.append("</svg>")
    return "\n".join(out) + "\n"


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("results", nargs="+", help="JSON-lines result files")
    group = ap.add_mutually_exclusive_group(required=True)
    group.add_argument("--out", help="write the SVG here")
    group.add_argument("--check", help="fail when this committed SVG is not what the data gives")
    a = ap.parse_args(argv)
    try:
        svg = render(rows(medians(load(a.results))))
    except (OSError, ChartError) as e:
        print("chart.py: %s" % e, file=sys.stderr)
        return 1
    if a.out:
        with open(a.out, "w", encoding="utf-8") as f:
            f.write(svg)
        return 0
    try:
        with open(a.check, encoding="utf-8") as f:
            committed = f.read()
    except OSError as e:
        print("chart.py: %s" % e, file=sys.stderr)
        return 1
    if committed != svg:
        print("chart.py: %s is stale; regenerate it with --out %s" % (a.check, a.check),
              file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
