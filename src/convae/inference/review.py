"""A page a person reviews: one self-contained HTML file of a run's scored test images.

``convae score RUN --report PAGE.html`` (or ``anomaly.score(..., report=PATH)``)
writes it. Everything is inside the file (pictures as JPEG data, plots as SVG,
its script and style inline): it opens from a ``file://`` URL, copied anywhere,
with no network. It shows

- a summary: the data, the run, the score and how its threshold was set, image
  and pixel ROC-AUC and AUPRO overall and per defect type, flagged counts;
- plots: the ROC curve, the per-region-overlap curve (to 30 % false-positive
  pixels, as AUPRO integrates it) and the score distributions of normal and
  defective test images, the threshold marked;
- a gallery sorted by score: input | heat map over it | mask | reconstruction,
  file, score, flagged or not, defect type; filters by type and by flagged; a
  threshold control that moves the threshold and updates the flagged counts,
  the marks and the false-positive rate it means on the run's normal
  validation images, live. ``#threshold=T`` in the address sets it at load.

Without labels or masks (a folder of images to check) the page leaves out what
needs them. The gallery's pictures are thumbnails (at most :data:`THUMB`
pixels a side) loaded lazily, so a page of 1,000 images opens in seconds.
"""

from __future__ import annotations

import base64
import html
import io
import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from convae import checkpoint
from convae.inference.reports import heat_panels, mask_panel, to_png

THUMB = 96  # pixels, the longer side of each panel in the gallery (1,000 cards: a page of about 10 MB)
PRO_LIMIT = 0.3  # AUPRO's false-positive limit, drawn as the PRO curve's range


@dataclass
class Review:
    """What the page shows. Arrays are of the test images, in score order or not (the page sorts)."""

    title: str
    x: np.ndarray  # (N, C, H, W) in [0, 1]
    reconstructions: np.ndarray  # (N, C, H, W)
    maps: np.ndarray  # (N, H, W)
    scores: np.ndarray  # (N,)
    threshold: float
    validation_scores: np.ndarray  # the normal images the threshold was set on
    summary: dict[str, Any]  # metric, threshold rule, metrics (image_auroc, ...), per_type
    types: list[str] | None = None  # each image's type (``good`` or a defect's), when labelled
    masks: np.ndarray | None = None  # (N, H, W)
    files: list[str] | None = None
    facts: dict[str, str] = field(default_factory=dict)  # data, run, ... as shown at the top


def write_review(path: str | Path, review: Review) -> Path:
    """Write the page to ``path`` (atomically: a failure leaves nothing behind)."""
    page = render(review)
    path = Path(path)
    checkpoint.atomic_write(path, lambda f: f.write(page.encode()))
    return path


# ----------------------------------------------------------------------------- pictures and plots


def _jpeg(picture) -> str:
    buffer = io.BytesIO()
    picture.save(buffer, format="JPEG", quality=75)
    return "data:image/jpeg;base64," + base64.b64encode(buffer.getvalue()).decode()


def _card_picture(x: np.ndarray, amap: np.ndarray, recon: np.ndarray, mask: np.ndarray | None, low: float, top: float):
    """Input | heat map over it | mask (when known) | reconstruction, as one thumbnail strip."""
    from PIL import Image

    panels = heat_panels(x, amap, low, top) + ([mask_panel(mask)] if mask is not None else [])
    panels.append(np.repeat(recon, 3, 0) if recon.shape[0] == 1 else recon)
    row = [to_png(p).convert("RGB") for p in panels]
    scale = min(1.0, THUMB / max(row[0].size))
    size = (max(1, round(row[0].width * scale)), max(1, round(row[0].height * scale)))
    row = [r.resize(size, Image.Resampling.BILINEAR) if scale < 1 else r for r in row]
    canvas = Image.new("RGB", (len(row) * (size[0] + 2) - 2, size[1]), (255, 255, 255))
    for k, r in enumerate(row):
        canvas.paste(r, (k * (size[0] + 2), 0))
    return canvas


def _polyline(xs: np.ndarray, ys: np.ndarray, xmax: float = 1.0, colour: str = "#c0392b") -> str:
    points = " ".join(f"{40 + 250 * x / xmax:.1f},{270 - 250 * y:.1f}" for x, y in zip(xs, ys))
    return f'<polyline class="curve" points="{points}" fill="none" stroke="{colour}" stroke-width="2"/>'


def _axes(xlabel: str, ylabel: str, xmax: float = 1.0) -> str:
    ticks = "".join(
        f'<text x="{40 + 250 * t}" y="288" text-anchor="middle">{t * xmax:.2g}</text>'
        f'<text x="34" y="{274 - 250 * t}" text-anchor="end">{t:.2g}</text>'
        for t in (0, 0.5, 1)
    )
    return (
        '<rect x="40" y="20" width="250" height="250" fill="none" stroke="#999"/>'
        f'{ticks}<text x="165" y="304" text-anchor="middle">{xlabel}</text>'
        f'<text x="12" y="145" text-anchor="middle" transform="rotate(-90 12 145)">{ylabel}</text>'
    )


def _plot(title: str, body: str, name: str) -> str:
    return (
        f'<figure class="plot" data-plot="{name}"><figcaption>{title}</figcaption>'
        f'<svg viewBox="0 0 300 310" width="300" height="310" role="img" aria-label="{title}">{body}</svg></figure>'
    )


def roc_plot(truth: np.ndarray, scores: np.ndarray) -> str:
    from sklearn.metrics import roc_curve

    fpr, tpr, _ = roc_curve(truth, scores)
    diagonal = '<line x1="40" y1="270" x2="290" y2="20" stroke="#ccc" stroke-dasharray="4"/>'
    body = _axes("false-positive rate", "true-positive rate") + diagonal + _polyline(fpr, tpr)
    return _plot("ROC curve (images)", body, "roc")


def pro_plot(masks: np.ndarray, maps: np.ndarray) -> str:
    from convae.metrics import pro_curve

    fpr, pro = pro_curve(masks, maps)
    keep = fpr <= PRO_LIMIT
    step = max(1, int(keep.sum()) // 400)  # a few hundred points draw the same curve
    body = _axes("false-positive rate (pixels)", "per-region overlap", PRO_LIMIT)
    body += _polyline(fpr[keep][::step], pro[keep][::step], PRO_LIMIT)
    return _plot(f"Per-region overlap to {PRO_LIMIT:.0%} FPR (AUPRO)", body, "pro")


def histogram_plot(groups: dict[str, np.ndarray], threshold: float) -> str:
    """Score distributions, one outline per group, with the threshold as a line that the control moves."""
    every = np.concatenate(list(groups.values()))
    lo, hi = float(every.min()), float(every.max())
    hi = hi if hi > lo else lo + 1.0
    edges = np.linspace(lo, hi, 31)
    counts = {k: np.histogram(v, edges)[0] / max(len(v), 1) for k, v in groups.items()}
    top = max(float(c.max()) for c in counts.values()) or 1.0
    colours = ["#2e86c1", "#c0392b", "#7d3c98"]
    body = '<rect x="40" y="20" width="250" height="250" fill="none" stroke="#999"/>'
    legend = ""
    for k, (name, c) in enumerate(counts.items()):
        xs = np.repeat(edges, 2)[1:-1]
        ys = np.repeat(c / top, 2)
        points = " ".join(f"{40 + 250 * (x - lo) / (hi - lo):.1f},{270 - 250 * y:.1f}" for x, y in zip(xs, ys))
        colour = colours[k % len(colours)]
        body += f'<polyline class="curve" points="{points}" fill="none" stroke="{colour}" stroke-width="2"/>'
        legend += (
            f'<text x="50" y="{38 + 14 * k}" style="fill:{colour}">{html.escape(name)} ({len(groups[name])})</text>'
        )
    position = 40 + 250 * (threshold - lo) / (hi - lo)
    body += (
        f'<line id="threshold-line" data-lo="{lo}" data-hi="{hi}" x1="{position:.1f}" x2="{position:.1f}" '
        'y1="20" y2="270" stroke="#000" stroke-width="2" stroke-dasharray="5 3"/>'
    )
    body += legend + f'<text x="40" y="288">{lo:.3g}</text><text x="290" y="288" text-anchor="end">{hi:.3g}</text>'
    body += '<text x="165" y="304" text-anchor="middle">score</text>'
    return _plot("Score distributions (share of each group)", body, "scores")


def legend_bar() -> str:
    return (
        '<div class="legend"><span>heat map:</span><span class="bar"></span>'
        "<span>clear at the median map value &rarr; opaque red at the threshold</span></div>"
    )


# ----------------------------------------------------------------------------- the page


def render(review: Review) -> str:
    order = np.argsort(-review.scores, kind="stable")
    shown = review.maps[order]
    low = float(np.median(shown))
    top = max(float(review.threshold) if review.summary.get("metric") == "max" else float(shown.max()), low)
    truth = None
    if review.types is not None:
        truth = np.array([t != "good" for t in review.types])
        if truth.all() or not truth.any():
            truth = None
    cards = []
    for rank, i in enumerate(order):
        mask = None if review.masks is None else review.masks[i]
        picture = _card_picture(review.x[i], review.maps[i], review.reconstructions[i], mask, low, top)
        kind = review.types[i] if review.types is not None else ""
        name = review.files[i] if review.files is not None else f"#{i}"
        badge = f'<span class="type">{html.escape(kind)}</span>' if kind else ""
        cards.append(
            f'<div class="card" data-score="{float(review.scores[i])!r}" data-type="{html.escape(kind)}">'
            f'<img loading="lazy" src="{_jpeg(picture)}" alt="{html.escape(Path(name).name)}">'
            f'<div class="caption"><span class="rank">{rank + 1}</span> <span class="file" title="{html.escape(name)}">'
            f"{html.escape(Path(name).name)}</span> {badge}"
            f'<br>score <b>{review.scores[i]:.4g}</b> <span class="flag"></span></div></div>'
        )
    panels = "input | heat map" + (" | mask" if review.masks is not None else "") + " | reconstruction"
    plots = []
    if truth is not None:
        plots.append(roc_plot(truth, review.scores))
    if review.masks is not None and truth is not None:
        plots.append(pro_plot(review.masks, review.maps))
    groups = {"validation (normal)": review.validation_scores}
    if truth is not None:
        groups |= {"test: good": review.scores[~truth], "test: defective": review.scores[truth]}
    else:
        groups |= {"test": review.scores}
    plots.append(histogram_plot(groups, review.threshold))
    types = sorted(set(review.types)) if review.types is not None else []
    options = "".join(f'<option value="{html.escape(t)}">{html.escape(t)}</option>' for t in types)
    lo = float(min(review.scores.min(), review.validation_scores.min()))
    hi = float(max(review.scores.max(), review.validation_scores.max()))
    data = {
        "threshold": float(review.threshold),
        "validation": [float(v) for v in review.validation_scores],
        "lo": lo,
        "hi": hi,
    }
    return _TEMPLATE.format(
        title=html.escape(review.title),
        facts=_facts(review),
        metrics=_metrics(review.summary),
        plots="".join(plots),
        legend=legend_bar(),
        panels=panels,
        type_filter=""
        if not types
        else '<label>type <select id="type"><option value="">all</option>' + options + "</select></label>",
        cards="".join(cards),
        count=len(cards),
        lo=repr(lo),
        hi=repr(hi),
        threshold=repr(float(review.threshold)),
        data=json.dumps(data),
        script=_SCRIPT,
        style=_STYLE,
    )


def _facts(review: Review) -> str:
    rows = "".join(f"<tr><th>{html.escape(k)}</th><td>{html.escape(v)}</td></tr>" for k, v in review.facts.items())
    return f'<table class="facts">{rows}</table>'


def _metrics(summary: dict[str, Any]) -> str:
    keys = [("image_auroc", "image ROC-AUC"), ("pixel_auroc", "pixel ROC-AUC"), ("aupro", "AUPRO (30 % FPR)")]
    present = [(k, label) for k, label in keys if k in summary]
    if not present:
        return (
            '<p class="note">No labels or masks: the page shows scores and the threshold, not how well they work.</p>'
        )
    head = "".join(f"<th>{label}</th>" for _, label in present)
    rows = "<tr><th>all</th>" + "".join(f"<td>{summary[k]:.3f}</td>" for k, _ in present) + "</tr>"
    for name, values in summary.get("per_type", {}).items():
        rows += f"<tr><th>{html.escape(name)}</th>" + "".join(
            f"<td>{values[k]:.3f}</td>" if k in values else "<td>&ndash;</td>" for k, _ in present
        )
        rows += "</tr>"
    return f'<table class="metrics"><tr><th></th>{head}</tr>{rows}</table>'


_STYLE = """
body{font:15px/1.45 system-ui,-apple-system,"Segoe UI",Roboto,"DejaVu Sans",sans-serif;margin:24px;color:#222;
background:#fafafa}
h1{font-size:22px;margin:0 0 12px}h2{font-size:17px;margin:24px 0 8px}
table{border-collapse:collapse;margin:4px 0 12px}th,td{padding:3px 10px;text-align:left;border-bottom:1px solid #ddd}
td{font-variant-numeric:tabular-nums}.facts th{color:#555;font-weight:600}
.row{display:flex;flex-wrap:wrap;gap:24px;align-items:flex-start}
.plot{margin:0;background:#fff;border:1px solid #ddd;padding:8px}.plot figcaption{font-weight:600;margin-bottom:4px}
.plot text{font-size:11px;fill:#444}
.controls{position:sticky;top:0;background:#fafafa;padding:10px 0;border-bottom:1px solid #ddd;z-index:1;
display:flex;flex-wrap:wrap;gap:18px;align-items:center}
.controls input[type=range]{width:320px}#counts{font-weight:600}
.legend{display:flex;gap:8px;align-items:center;font-size:13px;color:#444}
.legend .bar{display:inline-block;width:160px;height:12px;border:1px solid #999;
background:linear-gradient(90deg,rgba(200,0,0,0),rgba(200,0,0,.8))}
.gallery{display:flex;flex-wrap:wrap;gap:12px;margin-top:12px}
.card{background:#fff;border:2px solid #ddd;padding:6px;font-size:13px;max-width:560px}
.card img{display:block;max-width:100%;height:auto}.card.flagged{border-color:#c0392b}
.card .flag{color:#c0392b;font-weight:600}.card .type{background:#eee;border-radius:3px;padding:0 5px}
.card .file{display:inline-block;max-width:260px;overflow:hidden;text-overflow:ellipsis;white-space:nowrap;
vertical-align:bottom}.card .rank{color:#888}.hidden{display:none}.note{color:#555}
"""

_SCRIPT = """
(function () {
  const data = JSON.parse(document.getElementById("review-data").textContent);
  const cards = Array.from(document.querySelectorAll(".card"));
  const slider = document.getElementById("threshold");
  const typeBox = document.getElementById("type");
  const flaggedOnly = document.getElementById("flagged-only");
  const line = document.getElementById("threshold-line");
  // The threshold itself, not the slider's value: a threshold past the scores' range (from the address)
  // stays what it is, where the slider can only show its end.
  let t = data.threshold;
  function update() {
    let flagged = 0, shown = 0;
    for (const card of cards) {
      const on = parseFloat(card.dataset.score) > t;
      card.classList.toggle("flagged", on);
      card.querySelector(".flag").textContent = on ? "flagged" : "";
      if (on) flagged++;
      const type = typeBox ? typeBox.value : "";
      const visible = (!type || card.dataset.type === type) && (!flaggedOnly.checked || on);
      card.classList.toggle("hidden", !visible);
      if (visible) shown++;
    }
    const falsePositives = data.validation.filter(v => v > t).length;
    const fpr = data.validation.length ? falsePositives / data.validation.length : 0;
    document.getElementById("threshold-value").textContent = t.toPrecision(4);
    document.getElementById("counts").textContent = flagged + " of " + cards.length + " test images flagged";
    document.getElementById("counts").dataset.flagged = flagged;
    document.getElementById("fpr").textContent = (100 * fpr).toFixed(1) + " % of " + data.validation.length +
      " normal validation images above it";
    document.getElementById("shown").textContent = shown + " shown";
    if (line) {
      const lo = parseFloat(line.dataset.lo), hi = parseFloat(line.dataset.hi);
      const x = 40 + 250 * Math.min(Math.max((t - lo) / (hi - lo), 0), 1);
      line.setAttribute("x1", x); line.setAttribute("x2", x);
    }
  }
  slider.addEventListener("input", () => { t = parseFloat(slider.value); update(); });
  const asked = /threshold=([-0-9.eE+]+)/.exec(window.location.hash);
  if (asked) {  // through the slider, as a person moves it; past its ends, the threshold alone
    const wanted = parseFloat(asked[1]);
    slider.value = wanted;
    if (parseFloat(slider.value) === wanted) slider.dispatchEvent(new Event("input")); else t = wanted;
  }
  document.getElementById("reset").addEventListener("click", () => { t = data.threshold; slider.value = t; update(); });
  for (const el of [typeBox, flaggedOnly]) if (el) el.addEventListener("input", update);
  update();
})();
"""

_TEMPLATE = """<!DOCTYPE html>
<html lang="en"><head><meta charset="utf-8"><meta name="viewport" content="width=device-width, initial-scale=1">
<title>{title}</title><style>{style}</style></head>
<body>
<h1>{title}</h1>
{facts}
<h2>How well the scores separate</h2>
{metrics}
<div class="row">{plots}</div>
<h2>Test images by score</h2>
<div class="controls">
<label>threshold <input id="threshold" type="range" min="{lo}" max="{hi}" step="any" value="{threshold}"></label>
<span id="threshold-value"></span> <button id="reset" type="button">as set on validation data</button>
<span id="counts"></span> <span id="fpr"></span>
{type_filter}
<label><input id="flagged-only" type="checkbox"> flagged only</label> <span id="shown"></span>
{legend}
</div>
<p class="note">Each card: {panels}. {count} images, highest score first.</p>
<div class="gallery">{cards}</div>
<script type="application/json" id="review-data">{data}</script>
<script>{script}</script>
</body></html>
"""
