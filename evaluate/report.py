"""One evaluation as ONE self-contained HTML page: metrics, curves and a card per image.

Nothing on the page is fetched: thumbnails and the curves PNG are base64 data URIs, the CSS and
the small sort/filter script are inline. FSGR runs can overlay each image's patch grid (codebook
concept per patch). The grid is drawn over the centred crop of aspect grid_w:grid_h (a square
for ViTs), the region open_clip's eval transform (resize short side + centre crop) encodes.
FSGR runs also get a codebook-usage table: share of patches per concept (`CodebookUsage`).

With `eval.subsets`, a "Subsets" table follows the header: each subset's images and metrics
computed on it alone (`SubsetRow`, x 100). With CHAIR, a "Hallucinations by category" table
follows: the most hallucinated categories with their mentions, hallucination rate, the
ground-truth objects present when they were hallucinated and what they co-occur with in the
training captions (`HallucinationTable`, from `evaluate.hallucination`).

The run's warnings (degenerate captions, PMA without prototypes, metrics not computed, stage
manifests' warnings) open the page in a banner. Nothing is wider than the window: text wraps
anywhere when a token is longer than its box (captions, file paths, signature lines), tables
scroll inside their own box, the card grid shrinks to the window.
"""

from __future__ import annotations

import base64
import html
import io
import math
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
from PIL import Image

from evaluate.metrics_table import Metric, columns
from shared.atomic_files import write_text_atomic
from shared.images import ImageError, load_rgb
from shared.models.fsgr import usage_summary

JPEG_QUALITY = 75


@dataclass
class Highlight:
    """A span of the generated caption to mark as hallucinated (character offsets)."""

    start: int
    end: int
    category: str


@dataclass
class ReportImage:
    """Everything one card of the report shows about one image."""

    image_id: int
    file: Path
    caption: str
    references: list[str]
    cider: float
    hallucinated: list[Highlight]
    mentioned: list[str]
    ground_truth: list[str]
    patch_concepts: np.ndarray | None = None  # [grid_h, grid_w] ids into concept_words


@dataclass
class CodebookUsage:
    """Patches assigned to each concept of the FSGR codebook, for the usage table."""

    counts: np.ndarray  # [C] patches per concept id (ids into the report's concept words)
    source: str = ""  # where the counts come from, e.g. "val images, argmax, fit epoch 3"


@dataclass
class CoObject:
    """An object shown next to a hallucinated category: `count` (hallucinated mentions it was
    present at, or training images with both) and P(category | object) in training."""

    category: str
    count: int
    p_given: float | None


@dataclass
class HallucinationRow:
    """One category of the hallucination table."""

    category: str
    mentions: int
    hallucinated: int
    rate: float | None
    present: list[CoObject] = field(default_factory=list)
    training: list[CoObject] = field(default_factory=list)


@dataclass
class HallucinationTable:
    """The most hallucinated categories and what the counts are over."""

    rows: list[HallucinationRow]
    mentions: int = 0
    hallucinated: int = 0
    training_images: int = 0
    vocabulary: str = "original"


@dataclass
class SubsetRow:
    """One named subset of the scored split: its file, images and metrics computed on it alone
    (fractions; the table prints x 100), and the metrics not computed with why."""

    name: str
    file: str
    images: int
    metrics: dict[str, float]
    not_computed: dict[str, str] = field(default_factory=dict)


@dataclass
class Thumbnail:
    """An inlined JPEG thumbnail, or the reason there is none."""

    uri: str = ""
    width: int = 0
    height: int = 0
    error: str = ""


@dataclass
class _Palette:
    """Concept ids seen while rendering cards, for the page's colour classes."""

    ids: set[int] = field(default_factory=set)


# ---------------------------------------------------------------------------------- values


def _esc(text: object) -> str:
    return html.escape(str(text), quote=True)


def format_metric(name: str, value: float | None) -> str:
    """CHAIR* fractions as percentages, integers as integers, other numbers with 3 decimals."""
    if value is None:
        return "n/a"
    if isinstance(value, (int, np.integer)) and not isinstance(value, bool):
        return str(int(value))
    try:
        value = float(value)
    except (TypeError, ValueError):
        return _esc(value)
    if not math.isfinite(value):
        return "n/a"
    if name.upper().startswith("CHAIR"):
        return f"{100.0 * value:.2f}%"
    return f"{value:.3f}"


def concept_hue(concept_id: int) -> int:
    """A stable, well-spread hue per concept id (golden-ratio multiplicative hash)."""
    return int(((concept_id * 0.6180339887498949) % 1.0) * 360)


def concept_word(concept_id: int, words: list[str] | None) -> str:
    """The word of a concept id; a readable stand-in when there is no word for it."""
    if concept_id < 0:
        return "(no concept)"
    if words is not None and concept_id < len(words):
        return words[concept_id]
    return f"concept {concept_id}"


# ---------------------------------------------------------------------------------- images


def make_thumbnail(file: Path, long_side: int) -> Thumbnail:
    """Decode `file` and shrink it to `long_side` px on its long side, as a JPEG data URI."""
    try:
        image = load_rgb(file, target_size=long_side)
    except ImageError as err:
        return Thumbnail(error=str(err))
    except OSError as err:  # permissions and the like; never crash the report on one image
        return Thumbnail(error=f"cannot read: {err}")
    scale = long_side / max(image.size)
    size = (max(1, round(image.width * scale)), max(1, round(image.height * scale)))
    image = image.resize(size, Image.Resampling.LANCZOS)
    buffer = io.BytesIO()
    image.save(buffer, "JPEG", quality=JPEG_QUALITY, optimize=True)
    uri = "data:image/jpeg;base64," + base64.b64encode(buffer.getvalue()).decode("ascii")
    return Thumbnail(uri=uri, width=size[0], height=size[1])


def png_data_uri(file: Path) -> str:
    """The bytes of a PNG file as a data URI (raises OSError when unreadable)."""
    return "data:image/png;base64," + base64.b64encode(Path(file).read_bytes()).decode("ascii")


# ---------------------------------------------------------------------------------- caption


def mark_caption(caption: str, spans: list[Highlight]) -> str:
    """HTML-escaped caption with each span wrapped in <mark class="hallucinated">."""
    parts, cursor = [], 0
    for span in sorted(spans, key=lambda s: (s.start, s.end)):
        if not 0 <= span.start <= span.end <= len(caption):
            raise ValueError(f"highlight {span.start}:{span.end} outside caption of "
                             f"{len(caption)} characters: {caption!r}")
        if span.start < cursor:
            raise ValueError(f"overlapping highlights at {span.start} in {caption!r}")
        parts.append(_esc(caption[cursor:span.start]))
        parts.append(f'<mark class="hallucinated" title="{_esc(span.category)}">'
                     f"{_esc(caption[span.start:span.end])}</mark>")
        cursor = span.end
    parts.append(_esc(caption[cursor:]))
    return "".join(parts)


# ---------------------------------------------------------------------------------- patch grid


def crop_box(width: int, height: int, grid_h: int, grid_w: int
             ) -> tuple[float, float, float, float]:
    """(left, top, width, height) px of the centred crop of aspect grid_w:grid_h."""
    crop_w = min(float(width), height * grid_w / grid_h)
    crop_h = crop_w * grid_h / grid_w
    return (width - crop_w) / 2, (height - crop_h) / 2, crop_w, crop_h


def validate_grid(grid: np.ndarray, image_id: int) -> np.ndarray:
    """`grid` as a 2-D integer array (ValueError otherwise)."""
    grid = np.asarray(grid)
    if grid.ndim != 2 or 0 in grid.shape or not np.issubdtype(grid.dtype, np.integer):
        raise ValueError(f"image {image_id}: patch_concepts must be a non-empty 2-D integer "
                         f"array [grid_h, grid_w], got {grid.dtype} {grid.shape}")
    return grid


def _cell(concept_id: int, words: list[str] | None) -> str:
    cls = "cell none" if concept_id < 0 else f"cell c{concept_id}"
    return f'<i class="{cls}" title="{_esc(concept_word(concept_id, words))}"></i>'


def render_overlay(grid: np.ndarray, thumb: Thumbnail, words: list[str] | None) -> str:
    """The patch grid as absolutely positioned, semi-transparent cells over the thumbnail."""
    grid_h, grid_w = grid.shape
    left, top, width, height = crop_box(thumb.width, thumb.height, grid_h, grid_w)
    style = (f"left:{left:.1f}px;top:{top:.1f}px;width:{width:.1f}px;height:{height:.1f}px;"
             f"grid-template-columns:repeat({grid_w},1fr);"
             f"grid-template-rows:repeat({grid_h},1fr)")
    cells = "".join(_cell(int(c), words) for c in grid.ravel())
    return (f'<div class="patch-grid" data-grid="{grid_h}x{grid_w}" '
            f'style="{style}">{cells}</div>')


def render_legend(grid: np.ndarray, words: list[str] | None) -> str:
    """Concepts present in one image, most patches first, with their colours and counts."""
    counts = Counter(int(c) for c in grid.ravel() if c >= 0)
    items = "".join(
        f'<li><span class="swatch c{cid}"></span>{_esc(concept_word(cid, words))}'
        f'<span class="count">{n}</span></li>' for cid, n in counts.most_common())
    return f'<ul class="legend" title="FSGR concept per patch">{items}</ul>'


# ---------------------------------------------------------------------------------- cards


def render_thumb(image: ReportImage, thumb: Thumbnail, grid: np.ndarray | None,
                 words: list[str] | None, box_px: int) -> str:
    """The thumbnail (or a placeholder naming the error) with the optional overlay + toggle."""
    if thumb.error:
        return (f'<div class="thumb-box" style="width:{box_px}px;min-height:{box_px}px">'
                f'<div class="placeholder"><b>image unavailable</b>'
                f"<span>{_esc(thumb.error)}</span><code>{_esc(image.file)}</code></div></div>")
    toggle = overlay = ""
    if grid is not None:
        toggle = (f'<input type="checkbox" class="ov-toggle" id="ov-{image.image_id}" checked>'
                  f'<label class="ov-label" for="ov-{image.image_id}">concept overlay</label>')
        overlay = render_overlay(grid, thumb, words)
    return (f'<div class="thumb-box" style="width:{box_px}px;min-height:{box_px}px">{toggle}'
            f'<div class="thumb" style="width:{thumb.width}px;height:{thumb.height}px">'
            f'<img src="{thumb.uri}" width="{thumb.width}" height="{thumb.height}" '
            f'alt="image {image.image_id}">{overlay}</div></div>')


def render_objects(mentioned: list[str], ground_truth: list[str]) -> str:
    """Mentioned objects (green when in the image, red when not) and the missed ones."""
    truth = set(ground_truth)
    said = "".join(f'<span class="chip {"ok" if m in truth else "bad"}">{_esc(m)}</span>'
                   for m in mentioned) or '<span class="none">none</span>'
    gt = "".join(f'<span class="chip {"ok" if g in set(mentioned) else "missed"}">'
                 f"{_esc(g)}</span>" for g in ground_truth) or '<span class="none">none</span>'
    return (f'<dl class="objects"><dt>mentioned</dt><dd>{said}</dd>'
            f"<dt>in image</dt><dd>{gt}</dd></dl>")


def render_card(index: int, image: ReportImage, words: list[str] | None, thumb_px: int,
                palette: _Palette) -> str:
    """One <article> card for one image."""
    thumb = make_thumbnail(Path(image.file), thumb_px)
    grid = None
    if image.patch_concepts is not None:
        grid = validate_grid(image.patch_concepts, image.image_id)
        palette.ids.update(int(c) for c in np.unique(grid) if c >= 0)
    n_hall = len(image.hallucinated)
    refs = "".join(f"<li>{_esc(r)}</li>" for r in image.references)
    cider = float(image.cider)
    badge = f'<span class="badge hall">{n_hall} hallucinated</span>' if n_hall else ""
    legend = render_legend(grid, words) if grid is not None else ""
    return (
        f'<article class="card" id="img-{image.image_id}" data-index="{index}" '
        f'data-cider="{cider if math.isfinite(cider) else -1}" data-hall="{n_hall}">'
        f'<div class="top">{render_thumb(image, thumb, grid, words, thumb_px)}'
        f'<div class="side"><h3>#{_esc(image.image_id)}</h3>'
        f'<div class="score">CIDEr <b>{format_metric("CIDEr", cider)}</b></div>{badge}'
        f"{legend}</div></div>"
        f'<p class="caption">{mark_caption(image.caption, image.hallucinated)}</p>'
        f"{render_objects(image.mentioned, image.ground_truth)}"
        f'<details class="refs"><summary>{len(image.references)} references</summary>'
        f"<ol>{refs}</ol></details></article>")


# ---------------------------------------------------------------------------------- page


def render_metrics(metrics: dict[str, float]) -> str:
    """The metrics as a name/value table."""
    rows = "".join(f'<tr><th>{_esc(k)}</th><td title="{_esc(v)}">{format_metric(k, v)}</td></tr>'
                   for k, v in metrics.items())
    return f'<table class="metrics"><tbody>{rows}</tbody></table>'


def render_curves(curves_png: Path | None) -> str:
    """The training-curve PNG inlined, or a note when it cannot be read."""
    if curves_png is None:
        return ""
    try:
        uri = png_data_uri(curves_png)
    except OSError as err:
        return f'<p class="note">training curves unavailable: {_esc(err)}</p>'
    return f'<figure class="curves"><img src="{uri}" alt="training curves"></figure>'


def render_usage(usage: CodebookUsage | None, words: list[str] | None, palette: _Palette,
                 max_rows: int = 100) -> str:
    """Concept word, share of patches (with a bar) and patch count, most used first; the
    concepts used, the usage entropy in bits and the unused ones in the summary."""
    if usage is None:
        return ""
    counts = np.asarray(usage.counts, dtype=np.int64).ravel()
    total = int(counts.sum())
    used = np.flatnonzero(counts > 0)
    order = used[np.argsort(-counts[used], kind="stable")]
    shares = counts[order] / max(total, 1)
    entropy = usage_summary(counts)["codebook_entropy_bits"]
    shown = order[:max_rows]
    palette.ids.update(int(c) for c in shown)
    top = shares[0] if len(shares) else 1.0
    rows = "".join(
        f'<tr><th><span class="swatch c{cid}"></span>{_esc(concept_word(int(cid), words))}</th>'
        f'<td class="bar-cell"><span class="bar c{cid}" style="width:{100 * share / top:.1f}%">'
        f'</span></td><td class="share">{100 * share:.1f}%</td>'
        f'<td class="count">{int(counts[cid])}</td></tr>'
        for cid, share in zip(shown.tolist(), shares[:max_rows].tolist()))
    if len(order) > len(shown):
        rest = int(counts[order[len(shown):]].sum())
        rows += (f'<tr class="rest"><th>{len(order) - len(shown)} more concepts</th><td></td>'
                 f'<td class="share">{100 * rest / max(total, 1):.1f}%</td>'
                 f'<td class="count">{rest}</td></tr>')
    source = f" · {_esc(usage.source)}" if usage.source else ""
    return (f'<details class="usage" open><summary>codebook usage: {len(used)} of {len(counts)} '
            f"concepts, entropy {entropy:.2f} bits, {total} patches{source}</summary>"
            f'<table class="usage-table"><thead><tr><th>concept</th><th></th>'
            f"<th>share of patches</th><th>patches</th></tr></thead><tbody>{rows}</tbody>"
            f"</table></details>")


def _co_objects(objects: list[CoObject], unit: str) -> str:
    """'cat 3× (P 0.67)' per object, separated by middle dots."""
    items = []
    for obj in objects:
        p = "–" if obj.p_given is None else f"{obj.p_given:.2f}"
        title = f"{obj.count} {unit}; P(category | {obj.category}) in training = {p}"
        items.append(f'<span class="co" title="{_esc(title)}">{_esc(obj.category)} '
                     f"<b>{obj.count}×</b> <i>P {p}</i></span>")
    return " · ".join(items) or '<span class="none">none</span>'


def render_hallucinations(table: HallucinationTable | None) -> str:
    """The "Hallucinations by category" section ('' without a table)."""
    if table is None:
        return ""
    rows = "".join(
        f"<tr><th>{_esc(r.category)}</th><td class=\"num\">{r.mentions}</td>"
        f'<td class="num">{r.hallucinated}</td>'
        f'<td class="num">{"n/a" if r.rate is None else f"{100 * r.rate:.1f}%"}</td>'
        f"<td>{_co_objects(r.present, 'hallucinated mentions with it in the image')}</td>"
        f"<td>{_co_objects(r.training, 'training images with both')}</td></tr>"
        for r in table.rows)
    if not rows:
        rows = '<tr><td colspan="6" class="none">no hallucinated mention</td></tr>'
    return (f'<section class="hallucinations" id="hallucinations">'
            f"<h2>Hallucinations by category</h2>"
            f'<p class="hall-note">{table.hallucinated} of {table.mentions} mentions '
            f"hallucinated (CHAIR {_esc(table.vocabulary)} vocabulary); the "
            f"{len(table.rows)} most hallucinated categories. <i>Present when "
            f"hallucinated</i>: ground-truth objects of the images where the category was "
            f"hallucinated (n× = its hallucinated mentions there); <i>co-occurs in "
            f"training</i>: the categories mentioned with it in most training images (n× = "
            f"images). P = P(category mentioned | object mentioned) over the "
            f"{table.training_images} training images' reference captions.</p>"
            f'<table class="hall-table"><thead><tr><th>category</th><th>mentions</th>'
            f"<th>hallucinated</th><th>rate</th><th>present when hallucinated</th>"
            f"<th>co-occurs in training</th></tr></thead><tbody>{rows}</tbody></table></section>")


def render_subsets(rows: list[SubsetRow] | None) -> str:
    """The "Subsets" section ('' without subsets): name, images and every metric (x 100)."""
    if not rows:
        return ""
    metrics = columns([r.metrics for r in rows], [r.not_computed for r in rows])
    head = "".join(f'<th title="{_esc(m.name)}">{_esc(m.short)}</th>' for m in metrics)

    def cell(row: SubsetRow, metric: Metric) -> str:
        value = row.metrics.get(metric.name)
        if value is None:
            return f'<td class="num" title="{_esc(row.not_computed.get(metric.name, ""))}">n/a</td>'
        return f'<td class="num">{metric.scale * float(value):.1f}</td>'

    body = "".join(f'<tr><th title="{_esc(r.file)}">{_esc(r.name)}</th>'
                   f'<td class="num">{r.images}</td>{"".join(cell(r, m) for m in metrics)}</tr>'
                   for r in rows)
    return (f'<section class="subsets" id="subsets"><h2>Subsets</h2>'
            f'<p class="hall-note">Each subset of the split scored alone (scores x 100): '
            f"pycocoevalcap on its captions, so CIDEr-D uses the subset's document frequencies; "
            f"CHAIR over its captions. Hover a name for its file.</p>"
            f'<table class="hall-table subset-table"><thead><tr><th>subset</th><th>images</th>'
            f"{head}</tr></thead><tbody>{body}</tbody></table></section>")


def palette_css(ids: set[int]) -> str:
    """One colour class per concept id used on the page (overlay cells and legend swatches)."""
    return "\n".join(f".c{i}{{--h:{concept_hue(i)}}}" for i in sorted(ids))


def render_banner(warnings: list[str]) -> str:
    """The run's warnings as a banner at the top of the page ('' when there are none)."""
    if not warnings:
        return ""
    items = "".join(f"<li>{_esc(w)}</li>" for w in warnings)
    noun = "warning" if len(warnings) == 1 else "warnings"
    return (f'<section class="banner" role="alert"><h2>{len(warnings)} {noun}: read before '
            f"using these results</h2><ul>{items}</ul></section>")


def render_header(title: str, images: list[ReportImage], metrics: dict[str, float],
                  config_lines: list[str] | None, curves_png: Path | None,
                  usage_html: str = "") -> str:
    """Title, summary line, metrics, config, curves and the codebook usage (FSGR runs)."""
    n_hall = sum(1 for im in images if im.hallucinated)
    config = (f'<details class="config" open><summary>config</summary>'
              f'<pre>{_esc(chr(10).join(config_lines))}</pre></details>' if config_lines else "")
    return (f"<header><h1>{_esc(title)}</h1>"
            f'<p class="summary">{len(images)} images · {n_hall} with hallucinated objects</p>'
            f'<div class="head-grid"><section>{render_metrics(metrics)}{config}</section>'
            f"<section>{render_curves(curves_png)}</section>"
            + (f'<section class="usage-box">{usage_html}</section>' if usage_html else "")
            + "</div></header>")


TOOLBAR = """<nav class="toolbar">
<label>sort <select id="sort"><option value="index">original order</option>
<option value="cider-asc">CIDEr, lowest first</option>
<option value="cider-desc">CIDEr, highest first</option>
<option value="hall-desc">hallucinations, most first</option></select></label>
<label><input type="checkbox" id="only-hall"> only images with hallucinations</label>
<label><input type="checkbox" id="all-ov" checked> concept overlays</label>
</nav>"""

SCRIPT = """<script>
(function () {
  const cards = document.getElementById('cards');
  const all = Array.from(cards.children);
  const key = {index: c => +c.dataset.index, 'cider-asc': c => +c.dataset.cider,
               'cider-desc': c => -c.dataset.cider, 'hall-desc': c => -c.dataset.hall};
  document.getElementById('sort').onchange = e => {
    const k = key[e.target.value];
    all.slice().sort((a, b) => k(a) - k(b) || a.dataset.index - b.dataset.index)
       .forEach(c => cards.appendChild(c));
  };
  document.getElementById('only-hall').onchange = e => all.forEach(c =>
    c.hidden = e.target.checked && c.dataset.hall === '0');
  document.getElementById('all-ov').onchange = e =>
    document.querySelectorAll('.ov-toggle').forEach(t => t.checked = e.target.checked);
})();
</script>"""

CSS = """
:root{--fg:#1d2330;--muted:#667085;--line:#e3e6ec;--bg:#f5f6f8;--card:#fff;--accent:#2f5bd3}
*{box-sizing:border-box}
body{margin:0;background:var(--bg);color:var(--fg);overflow-wrap:anywhere;
 font:14px/1.45 system-ui,-apple-system,"Segoe UI",Roboto,"Helvetica Neue",Arial,sans-serif}
img{max-width:100%}
table{max-width:100%}
.banner{background:#fffaeb;border-bottom:2px solid #f79009;color:#7a2e0e;padding:10px 28px}
.banner h2{margin:0 0 4px;font-size:15px}
.banner ul{margin:0;padding-left:20px}
header{background:var(--card);border-bottom:1px solid var(--line);padding:18px 28px}
h1{margin:0 0 2px;font-size:22px}
.summary{margin:0 0 12px;color:var(--muted)}
.head-grid{display:flex;flex-wrap:wrap;gap:24px;align-items:flex-start}
.head-grid section{min-width:0;max-width:100%}
.metrics{border-collapse:collapse;font-variant-numeric:tabular-nums;min-width:min(220px,100%)}
.metrics th,.metrics td{padding:3px 12px;border-bottom:1px solid var(--line)}
.metrics th{text-align:left;font-weight:500;color:var(--muted)}
.metrics td{text-align:right;font-weight:600;white-space:nowrap;overflow-wrap:normal}
.config{margin-top:10px}
.config summary,.refs summary{cursor:pointer;color:var(--muted)}
pre{margin:4px 0;padding:8px 10px;background:var(--bg);border-radius:6px;font-size:12px;
 max-height:240px;overflow:auto;white-space:pre-wrap}
.curves{margin:0}
.curves img{max-width:min(640px,100%);border:1px solid var(--line);border-radius:6px}
.note{color:#b42318}
.toolbar{position:sticky;top:0;z-index:5;display:flex;gap:22px;flex-wrap:wrap;padding:8px 28px;
 background:rgba(245,246,248,.94);border-bottom:1px solid var(--line);color:var(--muted)}
#cards{display:grid;grid-template-columns:repeat(auto-fill,minmax(min(360px,100%),1fr));
 gap:16px;padding:18px 28px}
.card{background:var(--card);border:1px solid var(--line);border-radius:10px;padding:12px;
 box-shadow:0 1px 2px rgba(16,24,40,.05);scroll-margin-top:48px}
.card:target{outline:2px solid var(--accent)}
.top{display:flex;gap:12px;align-items:flex-start}
.thumb-box{flex:none;display:flex;flex-direction:column;align-items:center;
 justify-content:center;gap:4px}
.thumb{position:relative;background:#ddd;line-height:0}
.thumb img{display:block;border-radius:2px}
.patch-grid{position:absolute;display:grid;pointer-events:auto}
.cell{display:block;background:hsla(var(--h),85%,52%,.42);outline:1px solid rgba(255,255,255,.25)}
.cell.none{background:transparent}
.cell:hover{background:hsla(var(--h),85%,52%,.8)}
.ov-toggle{display:none}
.ov-label{order:2;font-size:11px;color:var(--muted);cursor:pointer;user-select:none}
.ov-label::before{content:"\\2611  "}
.ov-toggle:not(:checked)~.ov-label::before{content:"\\2610  "}
.ov-toggle:not(:checked)~.thumb .patch-grid{display:none}
.placeholder{width:100%;height:100%;display:flex;flex-direction:column;justify-content:center;
 gap:4px;padding:10px;background:repeating-linear-gradient(45deg,#f2f4f7 0 8px,#e9ecf1 8px 16px);
 border:1px dashed #b4bac6;border-radius:4px;color:#b42318;font-size:12px;word-break:break-word}
.placeholder code{color:var(--muted);font-size:11px}
.side{min-width:0;flex:1}
.side h3{margin:0;font-size:15px}
.score{color:var(--muted)}.score b{color:var(--fg);font-variant-numeric:tabular-nums}
.badge{display:inline-block;margin:4px 0;padding:1px 8px;border-radius:10px;font-size:12px}
.badge.hall{background:#fee4e2;color:#b42318}
.legend{list-style:none;margin:6px 0 0;padding:0;font-size:12px;columns:2;column-gap:8px}
.legend li{white-space:nowrap;overflow:hidden;text-overflow:ellipsis}
.swatch{display:inline-block;width:10px;height:10px;margin-right:4px;border-radius:2px;
 vertical-align:-1px;background:hsl(var(--h),85%,52%)}
.count{color:var(--muted);margin-left:4px}
.caption{font-size:15px;margin:10px 0 6px}
mark.hallucinated{background:#ffc9c2;color:#7a1108;border-bottom:2px solid #d92d20;
 padding:0 2px;border-radius:2px;cursor:help}
.objects{display:grid;grid-template-columns:auto 1fr;gap:2px 8px;margin:6px 0;font-size:12px}
.objects dt{color:var(--muted)}.objects dd{margin:0}
.chip{display:inline-block;margin:1px 3px 1px 0;padding:0 6px;border-radius:8px;border:1px solid}
.chip.ok{background:#ecfdf3;border-color:#abefc6;color:#067647}
.chip.bad{background:#fef3f2;border-color:#fecdca;color:#b42318}
.chip.missed{background:#f2f4f7;border-color:#d0d5dd;color:#475467}
.none{color:var(--muted)}
.refs ol{margin:4px 0 0;padding-left:20px;color:#344054}
.usage summary{cursor:pointer;color:var(--muted)}
.usage-table{border-collapse:collapse;font-size:12px;font-variant-numeric:tabular-nums;
 margin-top:4px;display:block;max-height:320px;overflow:auto}
.usage-table td.share,.usage-table td.count{white-space:nowrap;overflow-wrap:normal}
.usage-table th,.usage-table td{padding:1px 8px;border-bottom:1px solid var(--line)}
.usage-table tbody th{text-align:left;font-weight:500;white-space:nowrap}
.usage-table td.share,.usage-table td.count{text-align:right}
.bar-cell{width:160px}
.hallucinations,.subsets{background:var(--card);border-bottom:1px solid var(--line);
 padding:8px 28px 14px}
.hallucinations h2,.subsets h2{margin:0 0 2px;font-size:16px}
.hall-note{margin:0 0 6px;color:var(--muted);font-size:12px}
.hall-table{border-collapse:collapse;font-size:12px;font-variant-numeric:tabular-nums;
 display:block;max-width:100%;overflow:auto;max-height:420px}
.hall-table th,.hall-table td{padding:2px 8px;border-bottom:1px solid var(--line);
 text-align:left;vertical-align:top}
.hall-table td.num{text-align:right;white-space:nowrap;overflow-wrap:normal}
.hall-table th{overflow-wrap:normal}
.hall-table .co{white-space:nowrap}
.hall-table .co i{color:var(--muted);font-style:normal}
.bar{display:block;height:9px;border-radius:2px;background:hsl(var(--h),85%,52%)}
"""


def render_page(title: str, header: str, cards: list[str], palette: _Palette,
                banner: str = "") -> str:
    """The whole document."""
    return (f'<!DOCTYPE html>\n<html lang="en"><head><meta charset="utf-8">'
            f'<meta name="viewport" content="width=device-width,initial-scale=1">'
            f"<title>{_esc(title)}</title><style>{CSS}\n{palette_css(palette.ids)}</style>"
            f"</head><body>{banner}{header}{TOOLBAR}<main id=\"cards\">{''.join(cards)}</main>"
            f"{SCRIPT}</body></html>\n")


def write_report(path: Path, *, title: str, images: list[ReportImage], metrics: dict[str, float],
                 config_lines: list[str] | None = None, curves_png: Path | None = None,
                 concept_words: list[str] | None = None, thumbnail_px: int = 160,
                 codebook_usage: CodebookUsage | None = None,
                 warnings: list[str] | None = None,
                 hallucinations: HallucinationTable | None = None,
                 subsets: list[SubsetRow] | None = None) -> Path:
    """Write the HTML report; returns its path (written atomically: temp file + os.replace).
    `warnings` open the page in a banner; `subsets`, then `hallucinations` follow the
    header."""
    path = Path(path)
    palette = _Palette()
    cards = [render_card(i, image, concept_words, thumbnail_px, palette)
             for i, image in enumerate(images)]
    usage_html = render_usage(codebook_usage, concept_words, palette)
    header = (render_header(title, images, metrics, config_lines, curves_png, usage_html)
              + render_subsets(subsets) + render_hallucinations(hallucinations))
    write_text_atomic(path, render_page(title, header, cards, palette,
                                        render_banner(list(warnings or []))))
    return path
