"""report.html: one self-contained page (inline CSS and SVG, no script, no network fetch) from a ReportData.

Every string that comes from the user's data or run (texts, labels, domains, paths) goes through
``html.escape``; numbers are formatted here. Charts are hand-written SVG: grouped bars, histograms
and confusion matrices, each with its numbers printed, so nothing depends on hovering.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from html import escape

from metakd_cli import __version__
from metakd_cli.core.timing import why_unsteady, with_spread
from metakd_cli.ship.model_card import MeasuredSpeed


@dataclass
class ScoredRow:
    text: str
    text_pair: str | None
    label: str
    t: float
    lam: float | None


@dataclass
class ModelFigures:
    name: str
    accuracy: dict[str, float]  # per domain, plus "average"
    agreement: float | None  # % of rows where it predicts what the teacher predicts
    confusion: dict[str, list[list[int]]]  # per domain: [gold][predicted] counts
    size_mb: float | None
    latency_ms: float | None = None  # batch 1, from metakd eval (the median over its timing rounds)
    throughput: float | None = None  # rows/s at batch 32, from metakd eval (the median over its timing rounds)
    speed: MeasuredSpeed | None = None  # the same with their spread, the speed-up over the teacher, steadiness


@dataclass
class ReportData:
    run_dir: str
    split: str
    rows: int
    labels: list[str]
    domains: list[str]
    models: list[ModelFigures]
    speed_source: str | None  # the CPU eval measured speed on, or None: not measured
    t_by_domain: dict[str, list[float]] = field(default_factory=dict)  # finite t of each domain's training rows
    lam_by_domain: dict[str, list[float]] = field(default_factory=dict)
    lam_method: str | None = None
    most: dict[str, list[ScoredRow]] = field(default_factory=dict)
    least: dict[str, list[ScoredRow]] = field(default_factory=dict)
    settings: dict[str, str] = field(default_factory=dict)  # what was run, for the page's header
    # the student's training rows per domain: {"labelled": n, "transfer": n, an augment kind: n, ...}
    learnt_from: dict[str, dict[str, int]] = field(default_factory=dict)
    learnt_note: str = ""  # how each kind of row was learnt (report_html's caption of that table)
    notes: list[str] = field(default_factory=list)
    version: str = __version__

COLORS = {"teacher": "#4c78a8", "student": "#f58518", "onnx": "#54a24b", "int8": "#b279a2"}
DOMAIN_COLORS = ["#4c78a8", "#f58518", "#54a24b", "#e45756", "#72b7b2", "#eeca3b", "#b279a2", "#ff9da6",
                 "#9d755d", "#bab0ac"]
FONT = "font-family:system-ui,-apple-system,'Segoe UI',Roboto,sans-serif"
CSS = """
body{%s;margin:24px auto;max-width:1140px;color:#222;padding:0 16px}
h1{font-size:24px;margin-bottom:4px}h2{font-size:19px;margin-top:32px;border-bottom:1px solid #ddd;padding-bottom:4px}
h3{font-size:15px;margin:16px 0 6px}.meta{color:#555;font-size:13px}.note{color:#8a5a00;font-size:13px}
table{border-collapse:collapse;font-size:13px;margin:6px 0}td,th{border:1px solid #ddd;padding:3px 8px;text-align:right}
th{background:#f4f4f4}td.text,th.text{text-align:left;max-width:640px}.grid{display:flex;flex-wrap:wrap;gap:18px}
.legend span{display:inline-block;width:11px;height:11px;margin:0 4px 0 12px;vertical-align:middle}
.rows{display:grid;grid-template-columns:1fr 1fr;gap:16px}svg{overflow:visible}
""" % FONT


def _e(value: object) -> str:
    return escape(str(value), quote=True)


def _fmt(value: float | None, digits: int = 1) -> str:
    return "not measured" if value is None or (isinstance(value, float) and math.isnan(value)) else f"{value:.{digits}f}"


def _svg(width: int, height: int, body: list[str], label: str) -> str:
    return (f'<svg xmlns="http://www.w3.org/2000/svg" width="{width}" height="{height}" viewBox="0 0 {width} {height}" '
            f'role="img" aria-label="{_e(label)}" style="{FONT};font-size:11px">' + "".join(body) + "</svg>")


def _legend(names: list[str], colors: dict[str, str]) -> str:
    return '<div class="legend">' + "".join(
        f'<span style="background:{colors[n]}"></span>{_e(n)}' for n in names) + "</div>"


def accuracy_bars(data: ReportData) -> str:
    """Grouped bars: per domain (and the average), one bar per model, its accuracy printed on top."""
    groups = [d for d in data.domains if any(d in m.accuracy for m in data.models)]
    groups += ["average"] if len(groups) > 1 else []
    models = data.models
    bar, gap, left, top, plot_h = 36, 30, 40, 16, 220
    group_w = bar * len(models) + gap
    width = left + group_w * len(groups) + 10
    height = top + plot_h + 46
    body = []
    for tick in range(0, 101, 20):
        y = top + plot_h - tick / 100 * plot_h
        body.append(f'<line x1="{left}" x2="{width - 10}" y1="{y:.1f}" y2="{y:.1f}" stroke="#e6e6e6"/>'
                    f'<text x="{left - 6}" y="{y + 4:.1f}" text-anchor="end" fill="#666">{tick}</text>')
    for g, group in enumerate(groups):
        x0 = left + g * group_w + gap / 2
        for m, model in enumerate(models):
            value = model.accuracy.get(group)
            if value is None:
                continue
            h = value / 100 * plot_h
            x = x0 + m * bar
            body.append(f'<rect x="{x:.1f}" y="{top + plot_h - h:.1f}" width="{bar - 3}" height="{h:.1f}" '
                        f'fill="{COLORS[model.name]}"><title>{_e(model.name)} {_e(group)}: {value:.1f}%</title></rect>'
                        f'<text x="{x + (bar - 3) / 2:.1f}" y="{top + plot_h - h - 3:.1f}" text-anchor="middle" '
                        f'font-size="9">{value:.1f}</text>')
        body.append(f'<text x="{x0 + bar * len(models) / 2:.1f}" y="{top + plot_h + 16}" text-anchor="middle" '
                    f'font-weight="{"bold" if group == "average" else "normal"}">{_e(_short(group, 18))}</text>')
    body.append(f'<text x="{left}" y="{top + plot_h + 38}" fill="#666">accuracy (%) on the {_e(data.split)} split'
                "</text>")
    return _legend([m.name for m in models], COLORS) + _svg(width, height, body, "accuracy per domain and model")


def hbars(values: list[tuple[str, float | None]], unit: str, title: str) -> str:
    """Horizontal bars, one per model, the value printed after the bar ('not measured' without one)."""
    row, left, plot_w = 24, 70, 260
    largest = max([v for _, v in values if v is not None] or [1.0]) or 1.0
    body = [f'<text x="0" y="12" font-weight="bold">{_e(title)}</text>']
    for i, (name, value) in enumerate(values):
        y = 22 + i * row
        body.append(f'<text x="{left - 6}" y="{y + 14}" text-anchor="end">{_e(name)}</text>')
        if value is None:
            body.append(f'<text x="{left}" y="{y + 14}" fill="#999">not measured</text>')
            continue
        w = max(1.0, value / largest * plot_w)
        body.append(f'<rect x="{left}" y="{y + 3}" width="{w:.1f}" height="{row - 8}" fill="{COLORS.get(name, "#888")}"/>'
                    f'<text x="{left + w + 5:.1f}" y="{y + 14}">{_fmt(value, 2 if value < 10 else 1)} {_e(unit)}</text>')
    return _svg(left + plot_w + 110, 26 + len(values) * row, body, title)


def histogram(values: list[float], lo: float, hi: float, title: str, color: str, bins: int = 20,
              width: int = 250, height: int = 164) -> str:
    """A histogram of ``values`` over [lo, hi] with its count, mean and range printed."""
    left, top, plot_h, plot_w = 30, 20, height - 66, width - 40
    span = (hi - lo) or 1.0
    counts = [0] * bins
    for v in values:
        counts[min(bins - 1, max(0, int((v - lo) / span * bins)))] += 1
    peak = max(counts) or 1
    body = [f'<text x="0" y="12" font-weight="bold">{_e(_short(title, 34))}</text>']
    for i, count in enumerate(counts):
        h = count / peak * plot_h
        x = left + i * plot_w / bins
        body.append(f'<rect x="{x:.1f}" y="{top + plot_h - h:.1f}" width="{plot_w / bins - 1:.1f}" height="{h:.1f}" '
                    f'fill="{color}"><title>{count} rows in [{lo + i * span / bins:.3f}, '
                    f'{lo + (i + 1) * span / bins:.3f})</title></rect>')
    body.append(f'<line x1="{left}" x2="{left + plot_w}" y1="{top + plot_h}" y2="{top + plot_h}" stroke="#999"/>'
                f'<text x="{left}" y="{top + plot_h + 13}" fill="#666">{lo:.2f}</text>'
                f'<text x="{left + plot_w}" y="{top + plot_h + 13}" text-anchor="end" fill="#666">{hi:.2f}</text>'
                f'<text x="{left - 4}" y="{top + 8}" text-anchor="end" fill="#666">{peak}</text>')
    if values:
        mean = sum(values) / len(values)
        x = left + (mean - lo) / span * plot_w
        body.append(f'<line x1="{x:.1f}" x2="{x:.1f}" y1="{top}" y2="{top + plot_h}" stroke="#222" '
                    'stroke-dasharray="3,2"/>')
        body.append(f'<text x="{left}" y="{top + plot_h + 28}" fill="#444">{len(values):,} rows, mean {mean:.3f}</text>'
                    f'<text x="{left}" y="{top + plot_h + 42}" fill="#444">min {min(values):.3f}, '
                    f'max {max(values):.3f}</text>')
    return _svg(width, height, body, title)


def confusion_svg(counts: list[list[int]], labels: list[str], title: str) -> str:
    """Rows: gold label; columns: predicted; each cell's count printed, shaded by its share of the row."""
    n = len(labels)
    cell = 48 if n <= 3 else 36 if n <= 6 else 26
    left, top = 86, 34
    body = [f'<text x="0" y="12" font-weight="bold">{_e(_short(title, 30))}</text>',
            f'<text x="{left + n * cell / 2:.1f}" y="26" text-anchor="middle" fill="#666">predicted</text>']
    for i in range(n):
        total = sum(counts[i]) or 1
        body.append(f'<text x="{left - 4}" y="{top + i * cell + cell / 2 + 4:.1f}" text-anchor="end">'
                    f'{_e(_short(labels[i], 12))}</text>')
        for j in range(n):
            share = counts[i][j] / total
            fill = f"rgba(76,120,168,{0.08 + 0.85 * share:.2f})" if i == j else f"rgba(228,87,86,{0.08 + 0.85 * share:.2f})"
            x, y = left + j * cell, top + i * cell
            body.append(f'<rect x="{x}" y="{y}" width="{cell - 1}" height="{cell - 1}" fill="{fill}">'
                        f'<title>gold {_e(labels[i])}, predicted {_e(labels[j])}: {counts[i][j]}</title></rect>'
                        f'<text x="{x + cell / 2:.1f}" y="{y + cell / 2 + 4:.1f}" text-anchor="middle">{counts[i][j]}</text>')
    for j in range(n):
        body.append(f'<text x="{left + j * cell + cell / 2:.1f}" y="{top + n * cell + 12}" text-anchor="middle" '
                    f'fill="#444">{_e(_short(labels[j], max(3, cell // 6)))}</text>')
    return _svg(left + n * cell + 8, top + n * cell + 18, body, title)


def _domain_color(data: ReportData, domain: str) -> str:
    index = data.domains.index(domain) if domain in data.domains else 0
    return DOMAIN_COLORS[index % len(DOMAIN_COLORS)]


def _short(text: str, limit: int) -> str:
    text = " ".join(str(text).split())
    return text if len(text) <= limit else text[: limit - 1] + "…"


def _rows_table(rows: list[ScoredRow], caption: str) -> str:
    lam = any(r.lam is not None for r in rows)
    head = "<tr><th>t</th>" + ("<th>lambda</th>" if lam else "") + "<th class=\"text\">label</th><th class=\"text\">text</th></tr>"
    body = "".join(
        f"<tr><td>{r.t:.3f}</td>" + (f"<td>{_fmt(r.lam, 3)}</td>" if lam else "")
        + f'<td class="text">{_e(_short(r.label, 20))}</td><td class="text" title="{_e(_short(r.text, 1000))}">'
        + _e(_short(r.text + (f" || {r.text_pair}" if r.text_pair else ""), 160)) + "</td></tr>" for r in rows)
    return f"<h3>{_e(caption)}</h3><table>{head}{body}</table>"


def speed_table(models: list[ModelFigures]) -> str:
    """Each measured speed as the median over eval's timing rounds with the fastest and slowest round, the speed-up
    over the teacher from the same rounds, and a note when those rounds were unsteady."""
    timed = [m for m in models if m.speed is not None]
    if not timed:
        return ""
    rounds = sorted({m.speed.rounds for m in timed if m.speed.rounds})
    rows = "".join(
        f"<tr><th>{_e(m.name)}</th><td>{with_spread(m.speed.latency_ms, m.speed.latency_spread)}</td>"
        f"<td>{with_spread(m.speed.throughput, m.speed.throughput_spread, 1)}</td>"
        f"<td>{'-' if m.speed.speedup is None else f'{m.speed.speedup:.2f}x'}</td></tr>" for m in timed)
    notes = "".join(f'<p class="note">Unsteady when measured ({_e(why)}): the ratios hold better than the absolute '
                    "times.</p>" for why in dict.fromkeys(why_unsteady(m.speed.unsteady) for m in timed
                                                          if m.speed.unsteady))
    how = (f"Medians of {' or '.join(map(str, rounds))} interleaved rounds (every model in turn), the fastest and "
           "slowest round in brackets; the speed-up over the teacher's throughput comes from the same rounds."
           if rounds else "Timed once per model (an eval from before timing rounds).")
    return (f'<p class="meta">{how}</p><table><tr><th>model</th><th>ms per row, batch 1</th><th>rows/s, batch 32</th>'
            f"<th>throughput vs teacher</th></tr>{rows}</table>{notes}")


def learnt_table(learnt: dict[str, dict[str, int]], note: str = "") -> str:
    """Rows per domain: labelled (gold and the teacher's soft labels) and those only the teacher labelled, by kind."""
    kinds = list(dict.fromkeys(k for counts in learnt.values() for k in counts))
    names = {"labelled": "labelled rows", "transfer": "your texts (--transfer)"}
    head = "".join(f"<th>{_e(names.get(k, f'derived: {k}'))}</th>" for k in kinds)
    rows = "".join(f"<tr><th>{_e(domain)}</th>" + "".join(f"<td>{counts.get(k, 0):,}</td>" for k in kinds) + "</tr>"
                   for domain, counts in learnt.items())
    total = "".join(f"<td>{sum(c.get(k, 0) for c in learnt.values()):,}</td>" for k in kinds)
    return (f"<table><tr><th>domain</th>{head}</tr>{rows}<tr><th>total</th>{total}</tr></table>"
            + (f'<p class="meta">{_e(note)}</p>' if note else ""))


def render_html(data: ReportData) -> str:
    models = data.models
    parts = ["<!DOCTYPE html>", '<html lang="en"><head><meta charset="utf-8">',
             '<meta name="viewport" content="width=device-width, initial-scale=1">',
             f"<title>metakd report — {_e(data.run_dir)}</title><style>{CSS}</style></head><body>",
             f"<h1>metakd report</h1><div class=\"meta\">run folder <code>{_e(data.run_dir)}</code> · "
             + " · ".join(f"{_e(k)} <code>{_e(v)}</code>" for k, v in data.settings.items())
             + f" · metakd {_e(data.version)}</div>"]
    for note in data.notes:
        parts.append(f'<p class="note">{_e(note)}</p>')

    parts.append(f"<h2 id=\"accuracy\">Accuracy per domain</h2><p class=\"meta\">{data.rows:,} {_e(data.split)} rows, scored now "
                 "from the models in the run folder.</p>" + accuracy_bars(data))
    table = ["<table><tr><th>model</th>" + "".join(f"<th>{_e(d)}</th>" for d in data.domains)
             + ("<th>average</th>" if len(data.domains) > 1 else "") + "<th>agreement with teacher %</th></tr>"]
    for m in models:
        keys = data.domains + (["average"] if len(data.domains) > 1 else [])
        table.append(f"<tr><th>{_e(m.name)}</th>" + "".join(f"<td>{_fmt(m.accuracy.get(k))}</td>" for k in keys)
                     + f"<td>{'-' if m.name == 'teacher' else _fmt(m.agreement)}</td></tr>")
    parts.append("".join(table) + "</table>")

    if data.learnt_from:
        parts.append("<h2 id=\"rows-learnt\">What the student learnt from</h2>" + learnt_table(data.learnt_from, data.learnt_note))

    speed = (f"Latency and throughput measured by <code>metakd eval</code> on {_e(data.speed_source)}."
             if data.speed_source else "Latency and throughput: not measured; run <code>metakd eval</code>.")
    parts.append("<h2 id=\"speed\">Size and speed</h2><p class=\"meta\">" + speed + "</p><div class=\"grid\">"
                 + hbars([(m.name, m.size_mb) for m in models], "MB", "size on disk (MB)")
                 + hbars([(m.name, m.latency_ms) for m in models], "ms", "latency per row, batch 1 (ms)")
                 + hbars([(m.name, m.throughput) for m in models], "rows/s", "throughput, batch 32 (rows/s)")
                 + "</div>" + speed_table(models))

    parts.append("<h2 id=\"t\">Transferability t per domain</h2>")
    if data.t_by_domain:
        every = [v for vs in data.t_by_domain.values() for v in vs]
        lo, hi = min(every), max(every)
        parts.append('<p class="meta">t = alpha·cos(h, own prototype) + zeta·cos(h, the other domains\' prototypes), '
                     "from the pretrained encoder, for each training row; the dashed line is the mean.</p>"
                     '<div class="grid">' + "".join(
                         histogram(vs, lo, hi, f"t — {domain}", _domain_color(data, domain))
                         for domain, vs in data.t_by_domain.items()) + "</div>")
    else:
        parts.append('<p class="meta">No t in this run (only <code>--teacher-mode meta</code> computes it).</p>')

    parts.append("<h2 id=\"lambda\">lambda: how much each training row guided the student</h2>")
    if data.lam_by_domain:
        every = [v for vs in data.lam_by_domain.values() for v in vs]
        lo, hi = min(every), max(every)
        if hi - lo < 1e-9:
            parts.append(f'<p class="meta">Every row had lambda = {lo:.3f} (method <code>{_e(data.lam_method)}</code>).</p>')
        else:
            parts.append('<p class="meta">lambda = (1 + t) / (exp((1 − p)²) + 1), p the teacher\'s probability of the '
                         "gold label: the weight of each row's stage-1 loss.</p><div class=\"grid\">"
                         + histogram(every, lo, hi, "lambda — all domains", "#666", width=330)
                         + "".join(histogram(vs, lo, hi, f"lambda — {domain}", _domain_color(data, domain))
                                   for domain, vs in data.lam_by_domain.items()) + "</div>")
    else:
        parts.append('<p class="meta">No per-row lambda in this run.</p>')

    if data.most:
        parts.append("<h2 id=\"rows\">Most and least transferable training rows</h2>")
        for domain in data.most:
            parts.append(f"<h3>{_e(domain)}</h3><div class=\"rows\"><div>"
                         + _rows_table(data.most[domain], f"{len(data.most[domain])} most transferable (highest t)")
                         + "</div><div>"
                         + _rows_table(data.least[domain], f"{len(data.least[domain])} least transferable (lowest t)")
                         + "</div></div>")

    parts.append(f"<h2 id=\"confusion\">Confusion matrices ({_e(data.split)} split)</h2>")
    for domain in data.domains:
        cells = [confusion_svg(m.confusion[domain], data.labels, f"{m.name}") for m in models if domain in m.confusion]
        if cells:
            parts.append(f"<h3>{_e(domain)}</h3><div class=\"grid\">" + "".join(cells) + "</div>")
    parts.append('<p class="meta">Rows: gold label; columns: predicted. Written by <code>metakd report</code>.</p>'
                 "</body></html>")
    return "\n".join(parts) + "\n"
