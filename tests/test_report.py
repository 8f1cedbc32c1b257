"""The self-contained HTML evaluation report: content, escaping, inlining, overlay, rendering."""

from __future__ import annotations

import base64
import io
import os
import shutil
import subprocess
from dataclasses import dataclass, field
from html.parser import HTMLParser
from pathlib import Path

import numpy as np
import pytest
from PIL import Image, ImageDraw

from evaluate.report import (CodebookUsage, CoObject, HallucinationRow, HallucinationTable,
                             Highlight, ReportImage, crop_box, format_metric, write_report)

CONCEPT_WORDS = ["sky", "grass", "dog", "tree", "road", "water"]
METRICS = {"Bleu_4": 0.3871, "CIDEr": 1.1534, "SPICE": 0.2245, "CHAIRi": 0.0731,
           "CHAIRs": 0.1204, "n_images": 5}
CAPTION_0 = "a dog & a <cat> sitting on a red sofa"
CAPTION_3 = "two zebras next to a giraffe and a surfboard"
MARK_BG = (0xFF, 0xC9, 0xC2)  # mark.hallucinated background in the page CSS


def scene(size: tuple[int, int], seed: int) -> Image.Image:
    """A gradient with a few shapes: something a screenshot can tell apart from a blank page."""
    w, h = size
    x = np.linspace(0, 1, w)[None, :, None]
    y = np.linspace(0, 1, h)[:, None, None]
    base = np.array([[[40 + 30 * seed, 120, 200 - 30 * seed]]], float)
    pixels = np.clip(base * (0.5 + 0.5 * x) + 90 * y, 0, 255).astype(np.uint8)
    image = Image.fromarray(np.broadcast_to(pixels, (h, w, 3)).copy())
    draw = ImageDraw.Draw(image)
    draw.ellipse((w * 0.2, h * 0.3, w * 0.6, h * 0.8), fill=(230, 180, 40))
    draw.rectangle((w * 0.55, h * 0.1, w * 0.9, h * 0.45), fill=(30, 60, 30))
    return image


def curves_png(path: Path) -> Path:
    """A small line-chart PNG standing in for the training curves."""
    image = Image.new("RGB", (480, 200), "white")
    draw = ImageDraw.Draw(image)
    draw.line([(20 + 4 * i, 180 - 150 * (1 - np.exp(-i / 25))) for i in range(110)],
              fill=(47, 91, 211), width=3)
    draw.line([(20, 180), (460, 180)], fill="black")
    image.save(path)
    return path


# patches per concept of CONCEPT_WORDS (+ one id without a word); "tree" is never used
USAGE = CodebookUsage(np.array([50, 30, 15, 0, 4, 1, 0, 0]), "val images, argmax assignment")


def patch_grid() -> np.ndarray:
    """8x8 concept ids: sky on top, grass below, a dog in the middle, one patch without concept."""
    grid = np.zeros((8, 8), np.int64)
    grid[4:] = 1
    grid[3:6, 2:5] = 2
    grid[0, 7] = 3
    grid[7, 0] = -1
    return grid


def build_images(folder: Path) -> list[ReportImage]:
    """5 images: landscape JPEG, portrait PNG with a patch grid, missing file, square, tiny."""
    folder.mkdir(parents=True, exist_ok=True)
    scene((320, 240), 0).save(folder / "a.jpg", "JPEG")
    scene((120, 300), 1).save(folder / "b.png")
    scene((500, 500), 2).save(folder / "d.jpg", "JPEG")
    scene((50, 30), 3).save(folder / "e.png")
    cat = CAPTION_0.index("<cat>")
    zebra, surf = CAPTION_3.index("zebras"), CAPTION_3.index("surfboard")
    return [
        ReportImage(11, folder / "a.jpg", CAPTION_0, ["A dog & a cat <on> a couch.", "dog on sofa"],
                    0.412, [Highlight(cat, cat + 5, "cat")], ["dog", "cat", "couch"],
                    ["dog", "couch"]),
        ReportImage(22, folder / "b.png", "a dog standing in the grass", ["a dog on grass"],
                    1.873, [], ["dog"], ["dog"], patch_concepts=patch_grid()),
        ReportImage(33, folder / "gone.jpg", "a man riding a horse", ["a man on a horse"], 0.9,
                    [], ["person", "horse"], ["person", "horse"]),
        ReportImage(44, folder / "d.jpg", CAPTION_3, ["two giraffes"], 0.051,
                    [Highlight(surf, surf + 9, "surfboard"), Highlight(zebra, zebra + 6, "zebra")],
                    ["zebra", "giraffe", "surfboard"], ["giraffe"]),
        ReportImage(55, folder / "e.png", "a small picture", [], 0.0, [], [], []),
    ]


@pytest.fixture(scope="module")
def report(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, list[ReportImage], Path]:
    root = tmp_path_factory.mktemp("report")
    images = build_images(root / "images")
    curves = curves_png(root / "curves.png")
    out = write_report(root / "out" / "report.html", title="FSGR+PMA <test> run",
                       images=images, metrics=METRICS, curves_png=curves,
                       config_lines=["[fsgr]", "codebook = 512", "note = \"a < b\""],
                       concept_words=CONCEPT_WORDS, codebook_usage=USAGE)
    return out, images, curves


@dataclass
class Card:
    """What the parser saw inside one <article class="card">."""

    marks: list[tuple[str, str]] = field(default_factory=list)  # (title, text)
    img_srcs: list[str] = field(default_factory=list)
    cells: list[str] = field(default_factory=list)  # cell titles
    grid_style: str = ""
    legend: list[str] = field(default_factory=list)
    placeholder: str = ""


class ReportParser(HTMLParser):
    """Collects cards (in document order), their marks, images, cells, legends, placeholders."""

    def __init__(self) -> None:
        super().__init__(convert_charrefs=True)
        self.cards: dict[str, Card] = {}
        self.order: list[str] = []
        self.all_imgs: list[str] = []
        self._card: Card | None = None
        self._capture: str | None = None
        self._buffer: list[str] = []
        self._title = ""

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        a = {k: v or "" for k, v in attrs}
        classes = a.get("class", "").split()
        if tag == "article" and "card" in classes:
            self._card = self.cards[a["id"]] = Card()
            self.order.append(a["id"])
        if tag == "img":
            self.all_imgs.append(a["src"])
        if self._card is None:
            return
        if tag == "img":
            self._card.img_srcs.append(a["src"])
        elif tag == "i" and "cell" in classes:
            self._card.cells.append(a["title"])
        elif "patch-grid" in classes:
            self._card.grid_style = a["style"]
        elif tag == "mark":
            self._capture, self._title, self._buffer = "mark", a.get("title", ""), []
        elif "placeholder" in classes:
            self._capture, self._buffer = "placeholder", []
        elif tag == "li" and self._in_legend:
            self._capture, self._buffer = "legend", []
        if "legend" in classes:
            self._in_legend = True

    _in_legend = False

    def handle_endtag(self, tag: str) -> None:
        if self._card is None:
            return
        text = "".join(self._buffer)
        if tag == "mark" and self._capture == "mark":
            self._card.marks.append((self._title, text))
            self._capture = None
        elif tag == "div" and self._capture == "placeholder":
            self._card.placeholder, self._capture = text, None
        elif tag == "li" and self._capture == "legend":
            self._card.legend.append(text)
            self._capture = None
        elif tag == "ul":
            self._in_legend = False
        elif tag == "article":
            self._card = None

    def handle_data(self, data: str) -> None:
        if self._capture:
            self._buffer.append(data)


def parse(path: Path) -> ReportParser:
    parser = ReportParser()
    parser.feed(path.read_text(encoding="utf-8"))
    return parser


def decode_uri(uri: str, prefix: str) -> Image.Image:
    assert uri.startswith(prefix)
    image = Image.open(io.BytesIO(base64.b64decode(uri[len(prefix):])))
    image.load()
    return image


def test_every_image_is_a_card_in_order(report) -> None:
    path, images, _ = report
    assert parse(path).order == [f"img-{im.image_id}" for im in images]


def test_text_is_html_escaped(report) -> None:
    text = report[0].read_text(encoding="utf-8")
    assert "<cat>" not in text and "&lt;cat&gt;" in text
    assert "A dog &amp; a cat &lt;on&gt; a couch." in text
    assert "a dog &amp; a " in text
    assert "FSGR+PMA &lt;test&gt; run" in text and "<test>" not in text
    assert "note = &quot;a &lt; b&quot;" in text


def test_hallucinated_spans_are_marked_exactly(report) -> None:
    path, images, _ = report
    cards = parse(path).cards
    for image in images:
        expected = [(h.category, image.caption[h.start:h.end])
                    for h in sorted(image.hallucinated, key=lambda h: h.start)]
        assert cards[f"img-{image.image_id}"].marks == expected
    assert cards["img-11"].marks == [("cat", "<cat>")]


def test_thumbnails_are_inlined_jpegs_of_the_right_size(report) -> None:
    path, images, _ = report
    cards = parse(path).cards
    for image in images:
        srcs = cards[f"img-{image.image_id}"].img_srcs
        if not image.file.exists():
            assert srcs == []
            continue
        (src,) = srcs
        thumb = decode_uri(src, "data:image/jpeg;base64,")
        assert thumb.format == "JPEG" and max(thumb.size) == 160
        with Image.open(image.file) as original:
            assert abs(thumb.width / thumb.height - original.width / original.height) < 0.05


def test_thumbnail_px_is_honoured(tmp_path: Path) -> None:
    images = build_images(tmp_path / "images")[:1]
    path = write_report(tmp_path / "r.html", title="t", images=images, metrics={},
                        thumbnail_px=96)
    (src,) = parse(path).cards["img-11"].img_srcs
    assert decode_uri(src, "data:image/jpeg;base64,").size == (96, 72)


def test_no_external_references(report) -> None:
    text = report[0].read_text(encoding="utf-8")
    for needle in ("http://", "https://", 'src="/', "src='/", "<link", "@import", "url("):
        assert needle not in text, needle
    assert all(src.startswith("data:image/") for src in parse(report[0]).all_imgs)


def test_patch_grid_overlay_and_legend(report) -> None:
    path, images, _ = report
    cards = parse(path).cards
    card = cards["img-22"]
    grid = images[1].patch_concepts
    assert len(card.cells) == grid.shape[0] * grid.shape[1] == 64
    words = ["(no concept)" if c < 0 else CONCEPT_WORDS[c] for c in grid.ravel()]
    assert card.cells == words
    assert "grid-template-columns:repeat(8,1fr)" in card.grid_style
    assert "grid-template-rows:repeat(8,1fr)" in card.grid_style
    # 120x300 -> 64x160 thumbnail; the grid covers the centred square crop CLIP encoded
    assert "left:0.0px;top:48.0px;width:64.0px;height:64.0px" in card.grid_style
    assert card.legend == ["sky28", "grass25", "dog9", "tree1"]  # most patches first
    assert all(not cards[f"img-{i}"].cells for i in (11, 33, 44, 55))
    text = path.read_text(encoding="utf-8")
    assert 'id="ov-22"' in text and text.count('class="ov-toggle"') == 1
    for cid in range(4):
        assert f".c{cid}{{--h:" in text


class UsageParser(HTMLParser):
    """(concept, share, patches) rows of the codebook-usage table, and its summary line."""

    def __init__(self) -> None:
        super().__init__(convert_charrefs=True)
        self.rows: list[list[str]] = []
        self.summary = ""
        self._in_table = self._in_summary = False
        self._cell: list[str] | None = None

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        classes = dict(attrs).get("class", "") or ""
        if tag == "table" and "usage-table" in classes:
            self._in_table = True
        elif tag == "summary" and not self.summary:
            self._in_summary = True
        elif self._in_table and tag == "tr":
            self.rows.append([])
        elif self._in_table and tag in ("th", "td"):
            self._cell = []

    def handle_endtag(self, tag: str) -> None:
        if tag == "table":
            self._in_table = False
        elif tag == "summary":
            self._in_summary = False
        elif self._in_table and tag in ("th", "td") and self._cell is not None:
            self.rows[-1].append("".join(self._cell).strip())
            self._cell = None

    def handle_data(self, data: str) -> None:
        if self._cell is not None:
            self._cell.append(data)
        if self._in_summary and "codebook usage" in data:
            self.summary = data


def test_codebook_usage_table(report) -> None:
    text = report[0].read_text(encoding="utf-8")
    start = text.index('<details class="usage"')
    parser = UsageParser()
    parser.feed(text[start:text.index("</details>", start) + len("</details>")])
    header, *rows = parser.rows
    assert header == ["concept", "", "share of patches", "patches"]
    # most used first, unused concepts (tree, ids 6 and 7) left out
    assert [(r[0], r[2], r[3]) for r in rows] == [
        ("sky", "50.0%", "50"), ("grass", "30.0%", "30"), ("dog", "15.0%", "15"),
        ("road", "4.0%", "4"), ("water", "1.0%", "1")]
    shares = np.array([50, 30, 15, 4, 1]) / 100
    entropy = -(shares * np.log2(shares)).sum()
    assert parser.summary.startswith(
        f"codebook usage: 5 of 8 concepts, entropy {entropy:.2f} bits, 100 patches")
    assert "val images, argmax assignment" in parser.summary
    assert 'class="bar c0" style="width:100.0%"' in text  # bars relative to the top concept
    assert 'class="bar c1" style="width:60.0%"' in text
    assert ".c4{--h:" in text and ".c5{--h:" in text  # swatch colours of listed concepts


def test_codebook_usage_rows_are_capped(tmp_path: Path) -> None:
    from evaluate.report import _Palette, render_usage

    counts = np.arange(1, 121)[::-1].copy()  # 120 concepts, all used
    html = render_usage(CodebookUsage(counts), None, _Palette(), max_rows=100)
    parser = UsageParser()
    parser.feed(html)
    assert len(parser.rows) == 1 + 100 + 1
    rest = counts[100:].sum()
    assert parser.rows[-1] == ["20 more concepts", "", f"{100 * rest / counts.sum():.1f}%",
                               str(rest)]
    assert parser.rows[1][0] == "concept 0"
    no_usage = write_report(tmp_path / "r.html", title="t", images=[], metrics={})
    assert '<table class="usage-table"' not in no_usage.read_text(encoding="utf-8")


def test_missing_image_gets_a_placeholder(report) -> None:
    card = parse(report[0]).cards["img-33"]
    assert "image unavailable" in card.placeholder and "file not found" in card.placeholder
    assert "gone.jpg" in card.placeholder


def test_corrupt_image_gets_a_placeholder(tmp_path: Path) -> None:
    image = build_images(tmp_path / "images")[1]
    data = image.file.read_bytes()
    image.file.write_bytes(data[: len(data) // 2])
    path = write_report(tmp_path / "r.html", title="t", images=[image], metrics={},
                        concept_words=CONCEPT_WORDS)
    card = parse(path).cards["img-22"]
    assert "cannot decode" in card.placeholder and card.img_srcs == []


def test_curves_png_is_inlined(report) -> None:
    path, _, curves = report
    srcs = [s for s in parse(path).all_imgs if s.startswith("data:image/png;base64,")]
    assert len(srcs) == 1
    assert base64.b64decode(srcs[0].split(",", 1)[1]) == curves.read_bytes()


def test_metrics_table(report) -> None:
    text = report[0].read_text(encoding="utf-8")
    for name, shown in [("CIDEr", "1.153"), ("Bleu_4", "0.387"), ("CHAIRi", "7.31%"),
                        ("CHAIRs", "12.04%"), ("n_images", "5")]:
        assert f"<th>{name}</th>" in text and f">{shown}</td>" in text
    assert format_metric("CIDEr", float("nan")) == format_metric("SPICE", None) == "n/a"


def test_written_atomically_and_overwrites(tmp_path: Path) -> None:
    images = build_images(tmp_path / "images")[:2]
    target = tmp_path / "reports" / "r.html"
    target.parent.mkdir()
    target.write_text("old")
    out = write_report(target, title="t", images=images, metrics={"CIDEr": 1.0})
    assert out == target and target.read_text(encoding="utf-8").startswith("<!DOCTYPE html>")
    assert os.listdir(target.parent) == ["r.html"]


def test_bad_highlight_is_an_error(tmp_path: Path) -> None:
    image = build_images(tmp_path / "images")[0]
    image.hallucinated = [Highlight(0, 5, "x"), Highlight(3, 8, "y")]
    with pytest.raises(ValueError, match="overlapping"):
        write_report(tmp_path / "r.html", title="t", images=[image], metrics={})
    image.hallucinated = [Highlight(30, 99, "x")]
    with pytest.raises(ValueError, match="outside caption"):
        write_report(tmp_path / "r.html", title="t", images=[image], metrics={})
    assert not (tmp_path / "r.html").exists()


def test_crop_box_matches_centre_crop() -> None:
    assert crop_box(160, 120, 8, 8) == (20.0, 0.0, 120.0, 120.0)
    assert crop_box(64, 160, 8, 8) == (0.0, 48.0, 64.0, 64.0)
    assert crop_box(160, 160, 4, 8) == (0.0, 40.0, 160.0, 80.0)


CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")


def screenshot(html: Path, png: Path, profile: Path) -> None:
    """Render `html` with headless chromium into `png` (1280x2000)."""
    subprocess.run([CHROMIUM, "--headless", "--no-sandbox", "--disable-gpu",
                    "--disable-dev-shm-usage", "--hide-scrollbars", f"--user-data-dir={profile}",
                    f"--screenshot={png}", "--window-size=1280,2000", html.as_uri()],
                   check=True, timeout=60, capture_output=True)


@pytest.mark.skipif(CHROMIUM is None, reason="no chromium / chromium-browser on PATH")
def test_headless_browser_renders_the_page(report, tmp_path: Path) -> None:
    png = tmp_path / "shot.png"
    screenshot(report[0], png, tmp_path / "profile")
    assert png.is_file()
    pixels = np.asarray(Image.open(png).convert("RGB"))
    assert pixels.shape[:2] == (2000, 1280)
    non_white = (pixels.min(axis=2) < 235).mean()
    distinct = len(np.unique(pixels.reshape(-1, 3)[::7], axis=0))
    assert non_white > 0.03 and distinct > 500, (non_white, distinct)
    mark_pixels = (np.abs(pixels.astype(int) - MARK_BG).max(axis=2) <= 2).sum()
    assert mark_pixels > 100, "hallucination marks not rendered"
    if os.environ.get("REPORT_SCREENSHOT"):
        shutil.copy(png, os.environ["REPORT_SCREENSHOT"])


LONG_TOKEN = "x" * 400
LONG_PATH = Path("/data/" + "/".join(["a-rather-long-folder-name"] * 20) + "/image.jpg")


def css_rules(html: str) -> dict[str, str]:
    """selector -> declarations of the page's own CSS (the first rule of each selector)."""
    css = html[html.index("<style>") + len("<style>"):html.index("</style>")]
    rules: dict[str, str] = {}
    for block in css.split("}"):
        if "{" in block:
            selector, body = block.split("{", 1)
            for name in selector.split(","):
                rules.setdefault(name.strip(), body.replace("\n", ""))
    return rules


def test_warnings_open_the_page_in_a_banner(tmp_path: Path) -> None:
    images = build_images(tmp_path / "images")[:1]
    warnings = ["warning: 100% of the 5 captions are empty", "not computed: SPICE (offline)",
                "train: warning: <b>bold</b>"]
    html = write_report(tmp_path / "r.html", title="t", images=images, metrics={},
                        warnings=warnings).read_text(encoding="utf-8")
    body = html[html.index("<body>") + len("<body>"):]
    assert body.startswith('<section class="banner" role="alert"><h2>3 warnings: read before '
                           "using these results</h2><ul><li>warning: 100% of the 5 captions")
    assert "<li>train: warning: &lt;b&gt;bold&lt;/b&gt;</li>" in body
    plain = write_report(tmp_path / "p.html", title="t", images=images, metrics={})
    assert 'class="banner"' not in plain.read_text(encoding="utf-8")


def test_nothing_is_wider_than_the_window(tmp_path: Path) -> None:
    """Long captions, references, file paths, config/signature lines and metric names wrap
    (CSS `overflow-wrap:anywhere`, inherited from body; `pre` wraps its lines); tables, images
    and the card grid are capped at their box."""
    image = build_images(tmp_path / "images")[2]   # the missing file: its path is shown
    image.file, image.caption = LONG_PATH, f"a {LONG_TOKEN} on a table"
    image.references = [f"the {LONG_TOKEN}"]
    html = write_report(tmp_path / "r.html", title=f"run {LONG_TOKEN}", images=[image],
                        metrics={f"metric_{LONG_TOKEN}": 0.5},
                        config_lines=[f"signature train:xe|refs:{LONG_TOKEN}"],
                        warnings=[f"warning: {LONG_TOKEN}"]).read_text(encoding="utf-8")
    assert LONG_TOKEN in html and str(LONG_PATH) in html
    rules = css_rules(html)
    assert "overflow-wrap:anywhere" in rules["body"]
    for selector in (".caption", ".refs ol", "pre", "h1", ".banner ul", ".metrics th", "code"):
        assert "overflow-wrap:normal" not in rules.get(selector, ""), selector
        assert "white-space:nowrap" not in rules.get(selector, ""), selector
    assert "white-space:pre-wrap" in rules["pre"]
    assert "max-width:100%" in rules["table"] and "max-width:100%" in rules["img"]
    assert "minmax(min(360px,100%),1fr)" in rules["#cards"]
    assert "min-width:0" in rules[".head-grid section"]
    assert "overflow:auto" in rules[".usage-table"]   # a wide usage table scrolls in its box


OVERFLOW_PROBE = ("<script>document.title = 'width ' + document.documentElement.scrollWidth + "
                  "' of ' + window.innerWidth;</script>")


def assert_no_overflow(path: Path, tmp_path: Path) -> None:
    """The page rendered by headless Chromium in a 600 px window is no wider than the window
    (`OVERFLOW_PROBE` writes the measured widths into the title)."""
    path.write_text(path.read_text(encoding="utf-8").replace("</body>",
                                                             OVERFLOW_PROBE + "</body>"),
                    encoding="utf-8")
    dom = subprocess.run([CHROMIUM, "--headless", "--no-sandbox", "--disable-gpu",
                          "--disable-dev-shm-usage", f"--user-data-dir={tmp_path / 'profile'}",
                          "--window-size=600,900", "--dump-dom", path.as_uri()],
                         check=True, timeout=60, capture_output=True, text=True).stdout
    title = dom[dom.index("<title>") + len("<title>"):dom.index("</title>")]
    _, width, _, window = title.split()
    assert int(width) <= int(window), title


@pytest.mark.skipif(CHROMIUM is None, reason="no chromium / chromium-browser on PATH")
def test_headless_browser_sees_no_horizontal_overflow(tmp_path: Path) -> None:
    image = build_images(tmp_path / "images")[2]
    image.file, image.caption = LONG_PATH, f"a {LONG_TOKEN} on a table"
    path = write_report(tmp_path / "r.html", title=f"run {LONG_TOKEN}", images=[image],
                        metrics={"CIDEr": 1.0}, config_lines=[f"signature {LONG_TOKEN}"],
                        warnings=[f"warning: {LONG_TOKEN}"])
    assert_no_overflow(path, tmp_path)


def hallucination_table(category: str = "dog") -> HallucinationTable:
    """Two hallucinated categories, one with co-occurring objects, one never in training."""
    return HallucinationTable(
        [HallucinationRow(category, 12, 6, 0.5,
                          [CoObject("cat", 4, 0.41), CoObject("<sofa>", 2, None)],
                          [CoObject("cat", 30, 0.41)]),
         HallucinationRow("bench", 3, 1, 1 / 3)], mentions=40, hallucinated=7,
        training_images=250, vocabulary="original")


def test_hallucinations_by_category_section(tmp_path: Path) -> None:
    images = build_images(tmp_path / "images")[:1]
    html = write_report(tmp_path / "r.html", title="t", images=images, metrics={},
                        hallucinations=hallucination_table()).read_text(encoding="utf-8")
    start = html.index('<section class="hallucinations" id="hallucinations">')
    assert start > html.index("</header>")  # the section follows the header
    section = html[start:html.index('<nav class=')]
    assert "<h2>Hallucinations by category</h2>" in section
    assert "7 of 40 mentions hallucinated (CHAIR original vocabulary); the 2 most" in section
    assert "over the 250 training images" in section
    heads = section[section.index("<thead>"):section.index("</thead>")]
    assert [h.split("</th>")[0] for h in heads.split("<th>")[1:]] == [
        "category", "mentions", "hallucinated", "rate", "present when hallucinated",
        "co-occurs in training"]
    assert ('<tr><th>dog</th><td class="num">12</td><td class="num">6</td>'
            '<td class="num">50.0%</td>') in section
    assert "cat <b>4×</b> <i>P 0.41</i>" in section and "cat <b>30×</b>" in section
    assert "&lt;sofa&gt; <b>2×</b> <i>P –</i>" in section  # escaped; never in training
    assert '<td class="num">33.3%</td><td><span class="none">none</span></td>' in section
    rules = css_rules(html)
    assert "overflow:auto" in rules[".hall-table"] and "max-width:100%" in rules[".hall-table"]
    plain = write_report(tmp_path / "p.html", title="t", images=images, metrics={})
    assert 'class="hallucinations"' not in plain.read_text(encoding="utf-8")


@pytest.mark.skipif(CHROMIUM is None, reason="no chromium / chromium-browser on PATH")
def test_hallucination_table_does_not_widen_the_page(tmp_path: Path) -> None:
    image = build_images(tmp_path / "images")[0]
    path = write_report(tmp_path / "r.html", title="t", images=[image], metrics={"CIDEr": 1.0},
                        hallucinations=hallucination_table(f"dog {LONG_TOKEN}"))
    assert_no_overflow(path, tmp_path)
