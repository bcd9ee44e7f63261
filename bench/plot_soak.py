#!/usr/bin/env python3
"""Plots `surepush-bench soak --csv` files side by side: db/ size and publish rate over
time, one line per file, into one SVG (standard library only).

    python3 bench/plot_soak.py OUT.svg LABEL=FILE.csv [LABEL=FILE.csv ...]
"""
import csv
import sys

W, H, PAD = 640, 220, 50
COLOURS = ["#c0392b", "#2471a3", "#229954", "#7d3c98"]


def load(path):
    with open(path, newline="") as f:
        return [
            (float(r["elapsed_s"]), int(r["db_bytes"]) / 2**20, int(r["events_per_s"]))
            for r in csv.DictReader(f)
        ]


def panel(y0, title, unit, series, pick):
    tmax = max(t for _, rows in series for t, *_ in rows)
    vmax = max(pick(r) for _, rows in series for r in rows) * 1.1
    out = [f'<text x="{PAD}" y="{y0 - 8}" font-size="13">{title}</text>',
           f'<rect x="{PAD}" y="{y0}" width="{W - 2 * PAD}" height="{H - PAD}" fill="none" stroke="#999"/>']
    for i in range(5):
        v = vmax * i / 4
        y = y0 + (H - PAD) * (1 - i / 4)
        out.append(f'<text x="{PAD - 4}" y="{y + 4}" font-size="10" text-anchor="end">{v:,.0f}</text>')
    out.append(f'<text x="{W - PAD}" y="{y0 + H - PAD + 14}" font-size="10" text-anchor="end">{tmax:.0f} s</text>')
    out.append(f'<text x="6" y="{y0 + (H - PAD) / 2}" font-size="10">{unit}</text>')
    for n, (label, rows) in enumerate(series):
        pts = " ".join(
            f"{PAD + (W - 2 * PAD) * t / tmax:.1f},{y0 + (H - PAD) * (1 - pick((t, d, r)) / vmax):.1f}"
            for t, d, r in rows)
        c = COLOURS[n % len(COLOURS)]
        out.append(f'<polyline points="{pts}" fill="none" stroke="{c}" stroke-width="2"/>')
        out.append(f'<text x="{PAD + 8}" y="{y0 + 14 + 13 * n}" font-size="11" fill="{c}">{label}</text>')
    return out


def main():
    if len(sys.argv) < 3:
        sys.exit(__doc__)
    series = [(a.split("=", 1)[0], load(a.split("=", 1)[1])) for a in sys.argv[2:]]
    body = panel(30, "db/ size over time", "MiB", series, lambda r: r[1])
    body += panel(30 + H + 20, "acknowledged events per second", "ev/s", series, lambda r: r[2])
    svg = (f'<svg xmlns="http://www.w3.org/2000/svg" width="{W}" height="{2 * H + 60}" '
           f'font-family="sans-serif">' + "".join(body) + "</svg>\n")
    with open(sys.argv[1], "w") as f:
        f.write(svg)


if __name__ == "__main__":
    main()
