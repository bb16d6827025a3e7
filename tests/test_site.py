"""results/site/: written by build_report beside REPORT.md from the same tables, self-contained (every script, style
and image a file of the folder), and working in a real browser: headless Chromium through Selenium loads the pages
from disk. The browser tests skip, naming the reason, where Chromium or its driver is missing (`apt-get install -y
--no-install-recommends chromium chromium-driver`; CI installs them)."""
from __future__ import annotations

import io
import math
import re
import time
from html.parser import HTMLParser
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from bokeh.models import HoverTool, Legend
from PIL import Image
from selenium.webdriver.common.by import By
from selenium.webdriver.support.ui import Select, WebDriverWait

import benchmark.report.build as report
from benchmark.record.aggregate import aggregate_runs, validate_runs
from benchmark.report.build import build_report
from benchmark.report.convergence import COLUMNS as CERTIFICATE_COLUMNS
from benchmark.report.provenance import command_of_rows
from benchmark.report.site.browser import BrowserUnavailable, chromium, console_errors, open_page
from benchmark.report.site.figures import ablation_figures
from benchmark.report.site.overview import MARK_CHARS, ROW_KEYS, Cell, filter_marks, mark, overlaps, overview
from tests.report_synthetic import synthetic_runs

SMALL = dict(upstreams=("mel", "mockingjay", "aalbert", "mockingjay_random"), tasks=("phone_linear", "speaker_utterance"),
             fractions=(0.1, 1.0), seeds=(0, 1))
STAMP = "2026-11-26T00:00:00+00:00"  # after the synthetic rows' date (2026-11-25)


def _results(folder: Path, df: pd.DataFrame) -> Path:
    df.to_csv(folder / "runs.csv", index=False)
    (folder / "command.txt").write_text(f"python run_benchmark.py --seeds 2   # {STAMP}: {len(df)} runs in 1.0 min on cpu x2\n")
    return folder


class Page(HTMLParser):
    """What the tests read from a page: every tag's attributes, and each table's body rows as (text, attrs) cells."""

    def __init__(self, path: Path) -> None:
        super().__init__()
        self.tags: list[tuple[str, dict]] = []
        self.tables: dict[str, list[list[tuple[str, dict]]]] = {}
        self._table: str | None = None
        self._body = False
        self._cell: list | None = None
        self.feed(path.read_text(encoding="utf-8"))

    def handle_starttag(self, tag, attrs):
        a = dict(attrs)
        self.tags.append((tag, a))
        if tag == "table":
            self._table = a.get("id", f"table{len(self.tables)}")
            self.tables[self._table] = []
        elif tag == "tbody":
            self._body = True
        elif tag == "tr" and self._body:
            self.tables[self._table].append([])
        elif tag == "td" and self._body:
            self._cell = ["", a]

    def handle_endtag(self, tag):
        if tag == "td" and self._cell is not None:
            self.tables[self._table][-1].append((self._cell[0].strip(), self._cell[1]))
            self._cell = None
        elif tag == "tbody":
            self._body = False

    def handle_data(self, data):
        if self._cell is not None:
            self._cell[0] += data


@pytest.fixture(scope="module")
def small(tmp_path_factory) -> Path:
    results = _results(tmp_path_factory.mktemp("small"), synthetic_runs(**SMALL))
    build_report(results)
    return results


def _overview_keys(df: pd.DataFrame) -> pd.DataFrame:
    return aggregate_runs(validate_runs(df))[list(ROW_KEYS)].drop_duplicates()


def test_the_report_writes_a_self_contained_site(small):
    site = small / "site"
    pages = sorted(p.relative_to(site).as_posix() for p in site.rglob("*.html"))
    assert pages == ["checks.html", "index.html", "leaderboards.html", "studies.html",
                     "upstream/aalbert-small.html", "upstream/mel-default.html", "upstream/mockingjay-small.html",
                     "upstream/mockingjay_random-small.html"]
    for rel in pages:
        page = Page(site / rel)
        for tag, a in page.tags:
            ref = a.get("src") if tag in ("script", "img", "iframe", "source") else a.get("href") if tag in ("link", "a") else None
            if ref is None or ref.startswith(("#", "data:")):
                continue
            assert not re.match(r"^([a-z]+:)?//", ref), f"{rel}: <{tag}> loads {ref} from the network"
            assert (site / rel).parent.joinpath(ref.split("#")[0]).resolve().is_file(), f"{rel}: <{tag}> {ref} is missing"
        scripts = [a["src"] for tag, a in page.tags if tag == "script" and "src" in a]
        assert any(s.endswith("assets/site.js") for s in scripts)
    assert "url(" not in (site / "assets" / "site.css").read_text()  # no fonts or images fetched by the stylesheet
    assert not list(site.rglob("*.tmp"))


def test_overview_has_a_row_per_upstream_and_mode_with_the_reports_numbers(small):
    df = synthetic_runs(**SMALL)
    page = Page(small / "site" / "index.html")
    rows = page.tables["overview"]
    assert len(rows) == len(_overview_keys(df)) == 1 + 3 * (3 + 4)  # mel: last; the others: 3 modes + 4 layers
    score_heads = [a for tag, a in page.tags if tag == "th" and "data-task" in a]
    assert [(a["data-task"], a["data-end"]) for a in score_heads] == [
        ("phone_linear", "largest"), ("phone_linear", "smallest"), ("speaker_utterance", "largest"),
        ("speaker_utterance", "smallest")]
    # the cell of mockingjay's last layer at phone_linear's largest fraction is the ranked table's cell, verbatim
    row = next(r for r in rows if r[0][0] == "mockingjay:small" and r[2][0] == "last")
    cell = row[7][0].rstrip(" ★≈?")
    md = (small / "tables" / "phone_linear.md").read_text()
    line = next(ln for ln in md.splitlines() if "| mockingjay:small | last |" in ln)
    header = md.splitlines()[0].split(" | ")
    col = next(i for i, h in enumerate(header) if h.startswith("test frame accuracy"))
    assert cell == line.split(" | ")[col].strip() and "±" in cell
    assert row[7][1]["data-v"] != "" and row[8][0] != "-"  # and it has a smaller-fraction cell
    layer = next(r for r in rows if r[2][0] == "layer 2")
    assert layer[8][0] == "-"  # single-layer probes ran at the largest fraction only


def test_best_and_tied_cells_follow_the_intervals():
    cells = [Cell("", 80.0, 1.0, 3, ""), Cell("", 78.5, 0.6, 3, ""), Cell("", 70.0, 1.0, 3, ""),
             Cell("-", math.nan, math.nan, 0, ""), Cell("", 79.5, math.nan, 1, "")]
    # the one-seed cell has no interval and no outcomes: inside the best's interval it is tied; outside, its gap to the
    # best is open, judged neither way
    assert [c.mark for c in mark(cells, higher=True)] == ["best", "tied", "", "", "tied"]
    assert [c.mark for c in mark(cells, higher=False)] == ["", "", "best", "", "open"]
    assert overlaps(10.0, 1.0, 12.0, 1.0) and not overlaps(10.0, 0.9, 12.0, 1.0)
    assert not overlaps(10.0, math.nan, 10.5, math.nan) and overlaps(10.0, math.nan, 10.0, math.nan)
    two = mark([Cell("", 5.0, 0.1, 2, ""), Cell("", 5.0, 0.2, 2, "")], higher=True)
    assert [c.mark for c in two] == ["best", "best"]


def test_zero_width_intervals_tie_unless_the_paired_test_separates_them():
    """Every seed gave the same score (zero-width CIs): without outcomes the gap cannot be judged (open); with them,
    5 discordant test utterances of 120 are noise (tied) and 30 are not."""
    import numpy as np

    def utts(right: int):
        num = np.zeros(120, dtype=np.int64)
        num[:right] = 1
        return (num, np.ones(120, dtype=np.int64))

    best = Cell("", 100 * 90 / 120, 0.0, 3, "")
    assert [c.mark for c in mark([best, Cell("", 100 * 85 / 120, 0.0, 3, "")], higher=True)] == ["best", "open"]
    best = Cell("", 100 * 90 / 120, 0.0, 3, "", (utts(90),) * 3)
    near, far = Cell("", 100 * 85 / 120, 0.0, 3, "", (utts(85),) * 3), Cell("", 100 * 60 / 120, 0.0, 3, "", (utts(60),) * 3)
    assert [c.mark for c in mark([best, near, far], higher=True)] == ["best", "tied", ""]


def test_a_one_seed_cell_is_tied_by_test_noise_alone_and_otherwise_open():
    """A cell with one seed has no measure of its training noise. Where the paired test cannot tell it from the best,
    it is within noise (more noise could only widen that); where the paired test separates them, the gap is open:
    neither "within noise" (a one-seed best cell must not tie every cell of its column, 62 points against 90) nor
    beyond noise. A one-seed best cell without outcomes leaves every other cell open."""
    def utts(right: int):
        num = np.zeros(120, dtype=np.int64)
        num[:right] = 1
        return (num, np.ones(120, dtype=np.int64))

    best = Cell("", 100 * 90 / 120, math.nan, 1, "", (utts(90),))
    near = Cell("", 100 * 87 / 120, 0.5, 3, "", (utts(87),) * 3)
    far = Cell("", 100 * 60 / 120, 0.5, 3, "", (utts(60),) * 3)
    assert [c.mark for c in mark([best, near, far], higher=True)] == ["best", "tied", "open"]
    bare = [Cell("", 90.0, math.nan, 1, ""), Cell("", 62.0, 0.25, 3, ""), Cell("", 89.9, math.nan, 1, "")]
    assert [c.mark for c in mark(bare, higher=True)] == ["best", "open", "open"]


def test_each_choice_of_the_row_filters_marks_the_best_of_the_rows_it_shows():
    agg = aggregate_runs(validate_runs(synthetic_runs(**SMALL)))
    cols, rows = overview(agg)
    choices, marks = filter_marks(cols, rows)
    assert choices[0] == "|" and "last|mockingjay" in choices and "weighted_sum|" in choices
    assert [[m[0] for m in row] for row in marks] == [[MARK_CHARS[c.mark] for c in r.cells]
                                                       for r in rows]  # the first choice (no filter) is the page's
    changed = 0
    for k, choice in enumerate(choices):
        mode, family = choice.split("|")
        shown = [i for i, r in enumerate(rows) if mode in ("", r.mode) and family in ("", r.family)]
        for j, c in enumerate(cols):
            alone = mark([rows[i].cells[j] for i in shown], c.higher)
            assert [marks[i][j][k] for i in shown] == [MARK_CHARS[x.mark] for x in alone]
            assert all(marks[i][j][k] == "." for i in range(len(rows)) if i not in shown)
            changed += any(marks[i][j][k] != marks[i][j][0] for i in shown)
    assert changed  # some filter moves a best or tied mark: the marks are not just the page's, hidden


def test_each_score_column_marks_its_best_cell(small):
    rows = Page(small / "site" / "index.html").tables["overview"]
    for j in range(7, 11):  # the score columns, after upstream, family, mode, params, frames, time, recipe
        vals = [float(r[j][1]["data-v"]) if r[j][1]["data-v"] else math.nan for r in rows]
        marks = [r[j][1]["class"].split() for r in rows]
        best = [i for i, m in enumerate(marks) if "best" in m]
        assert best and all(vals[i] == np.nanmax(vals) for i in best)
        assert all(r[j][0].endswith("★") == ("best" in m) for r, m in zip(rows, marks))


def test_rows_are_matched_to_the_command_that_wrote_them():
    runs = pd.DataFrame({"date": ["2026-01-01T10:00:00+00:00", "2026-01-01T11:30:00+00:00", "2026-01-02T09:00:00+00:00",
                                  "not a date"]})
    cmds = ["python run_benchmark.py --quick   # 2026-01-01T10:05:00+00:00: 1 runs in 0.1 min on cpu",
            "python run_benchmark.py   # 2026-01-01T12:00:00+00:00: 1 runs in 30 min on cpu"]
    assert list(command_of_rows(runs, cmds)) == [0, 1, -1, -1]  # the last row is dated after every command
    assert list(command_of_rows(runs, ["python run_benchmark.py"])) == [0, 0, 0, 0]  # one unstamped command
    assert list(command_of_rows(runs, ["python a.py", "python b.py"])) == [-1, -1, -1, -1]
    assert list(command_of_rows(runs, [])) == [-1, -1, -1, -1]


def test_upstream_pages_hold_every_row_with_its_command(small):
    df = synthetic_runs(**SMALL)
    site = small / "site"
    links = {a["href"] for tag, a in Page(site / "index.html").tags if tag == "a" and a.get("href", "").startswith("upstream/")}
    assert links == {p.relative_to(site).as_posix() for p in (site / "upstream").glob("*.html")}
    page = Page(site / "upstream" / "mockingjay-small.html")
    runs = page.tables["runs-table"]
    mine = df[df["upstream"] == "mockingjay"]
    assert len(runs) == len(mine) and {r[0][0] for r in runs} == set(mine["run_id"])
    assert {r[-1][0] for r in runs} == {"[1]"}
    text = (site / "upstream" / "mockingjay-small.html").read_text()
    assert "python run_benchmark.py --seeds 2" in text and mine["ckpt_hash"].iloc[0] in text
    assert "Learned weighted-sum layer weights" in text and "Per-layer probes" in text  # figures of its rows
    assert len(page.tables["scores-table"]) == len(aggregate_runs(validate_runs(mine)))


def _certificate(df: pd.DataFrame) -> pd.DataFrame:
    rows = validate_runs(df)
    rows = rows[(rows["mode"] == "last") & (rows["task"] == "phone_linear")].head(3)
    cert = pd.DataFrame({c: rows[c] for c in CERTIFICATE_COLUMNS if c in rows})
    cert = cert.assign(probe_dev=70.0, probe_test=[71.0, 71.0, 65.0], reference_dev=70.5, reference_test=71.5,
                       reference_l2=1e-3, reference_iters=40, reference_converged=True, margin=1.0,
                       passes=[True, True, False])
    return cert[list(CERTIFICATE_COLUMNS)]


def test_checks_page_colours_verdicts_and_lists_failing_certificate_rows(tmp_path):
    df = synthetic_runs(**SMALL)
    results = _results(tmp_path, df)
    cert = _certificate(df)
    cert.to_csv(results / "convergence.csv", index=False)
    build_report(results)
    page = Page(results / "site" / "checks.html")
    checks = page.tables["table0"]
    classes = {"holds": "ok", "holds, within noise": "warn", "mixed": "warn", "does not hold": "bad", "not enough data": "na"}
    assert len(checks) == 9
    assert all(classes[c[1][0]] in c[1][1]["class"].split() for c in checks)
    failing = page.tables["failing-rows"]
    bad = cert[~cert["passes"]].iloc[0]
    assert len(failing) == 1 and failing[0][0][0] == f"{bad['upstream']}:{bad['preset']}" and failing[0][8][0] == "65.00"
    text = (results / "site" / "checks.html").read_text()
    assert "2/3 frozen-probe rows pass" in text and "2/3 frozen-probe rows pass" in (results / "REPORT.md").read_text()


def test_a_rebuild_drops_pages_the_rows_no_longer_have_and_keeps_the_screenshot(tmp_path):
    df = synthetic_runs(**SMALL)
    results = _results(tmp_path, df)
    build_report(results)
    (results / "site" / "overview.png").write_bytes(b"\x89PNG\r\n\x1a\n")
    _results(tmp_path, df[df["upstream"] != "aalbert"])
    build_report(results)
    assert not (results / "site" / "upstream" / "aalbert-small.html").exists()
    assert (results / "site" / "upstream" / "mel-default.html").is_file()
    assert (results / "site" / "overview.png").is_file()


def _png() -> bytes:
    buf = io.BytesIO()
    Image.new("RGB", (4, 4), "red").save(buf, format="PNG")
    return buf.getvalue()


def test_studies_attention_and_cost_appear_from_their_outputs(tmp_path):
    df = synthetic_runs(**SMALL)
    results = _results(tmp_path, df)
    att = results / "attention"
    (att / "heads").mkdir(parents=True)
    (att / "attention_maps.png").write_bytes(_png())
    (att / "attention_stats.md").write_text("| model | layer | entropy |\n|---|---|---|\n| mockingjay | 1 | 2.5 |\n")
    pd.DataFrame({"model": ["mockingjay", "aalbert"], "layer": [1, 1], "mean_distance_ms": [600.0, 700.0],
                  "entropy_nats": [2.77, 3.1], "n_utts": [20, 20]}).to_csv(att / "attention_stats.csv", index=False)
    pd.DataFrame({"model": ["mockingjay"] * 2, "layer": [1, 1], "head": [0, 1], "entropy_ratio": [0.5, 0.95],
                  "type": ["mixed", "global"]}).to_csv(att / "heads" / "head_classes.csv", index=False)
    pd.DataFrame([{"upstream": "mockingjay", "preset": "small", "ckpt_hash": "ab", "params": 4_000_000,
                   "pretrain_frames": 3.6e6, "pretrain_seconds": 900, "pretrain_frames_per_s": 4000.0,
                   "infer_rtf": 0.0123, "infer_audio_seconds": 15, "device": "cpu x2",
                   "date": "2026-01-01"}]).to_csv(results / "cost.csv", index=False)
    build_report(results)
    site = results / "site"
    studies = (site / "studies.html").read_text()
    assert "<td>2.5</td>" in studies and "0.0123" in studies
    assert 'src="img/attention-attention_maps.png"' in studies and (site / "img" / "attention-attention_maps.png").is_file()
    page = Page(site / "upstream" / "mockingjay-small.html")
    stats = next(t for t in page.tables.values() if t and t[0][0][0] == "1" and "600.000" in [c[0] for c in t[0]])
    assert len(stats) == 1  # its own layer's statistics, not aalbert's
    text = (site / "upstream" / "mockingjay-small.html").read_text()
    assert "Head types per layer" in text and "global" in text and "0.0123" in text
    assert "Head types" not in (site / "upstream" / "mel-default.html").read_text()


def test_ablation_figures_hover_and_hide_by_legend():
    agg = aggregate_runs(validate_runs(synthetic_runs(**SMALL)))
    figs = ablation_figures(agg)
    assert sorted(figs) == ["phone_linear", "speaker_utterance"]
    for fig in figs.values():
        legends = [x for x in fig.right if isinstance(x, Legend)]
        models = legends[0]
        assert models.click_policy == "hide" and [i.label.value for i in models.items] == [
            "mel", "mockingjay", "aalbert", "mockingjay_random"]
        hover = [t for t in fig.tools if isinstance(t, HoverTool)]
        assert len(hover) == 1 and ("test frame accuracy (%)" in dict(hover[0].tooltips) or
                                    "test utterance accuracy (%)" in dict(hover[0].tooltips))


def _many_runs() -> pd.DataFrame:
    """10,152 rows: the synthetic benchmark for 3 presets x 3 checkpoints of every upstream."""
    parts = []
    for i in range(9):
        d = synthetic_runs(seed=i)
        parts.append(d.assign(preset=d["preset"] + f"-v{i // 3}", ckpt_hash=d["ckpt_hash"].str[:6] + f"{i:02d}",
                              run_id=d["run_id"] + f"-{i}"))
    return pd.concat(parts, ignore_index=True)


@pytest.fixture(scope="module")
def big(tmp_path_factory, request) -> tuple[Path, dict[str, float]]:
    """The site of a 10,000-row runs.csv, with the build's times: the site, and REPORT.md + site together."""
    df = _many_runs()
    assert len(df) >= 10_000
    results = _results(tmp_path_factory.mktemp("big"), df)
    times = {}
    real = report.build_site

    def timed(*a, **k):
        t0 = time.perf_counter()
        out = real(*a, **k)
        times["site"] = time.perf_counter() - t0
        return out

    mp = pytest.MonkeyPatch()
    mp.setattr(report, "build_site", timed)
    try:
        t0 = time.perf_counter()
        build_report(results)
        times["report"] = time.perf_counter() - t0
    finally:
        mp.undo()
    return results, times


def test_ten_thousand_rows_build_the_site_in_under_30_s(big):
    results, times = big
    print(f"10,152 rows: site {times['site']:.1f} s, REPORT.md + site {times['report']:.1f} s")
    assert times["site"] < 30
    rows = Page(results / "site" / "index.html").tables["overview"]
    assert len(rows) == len(_overview_keys(_many_runs())) == 9 * (1 + 4 * 7)


# --- in a real browser ----------------------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def browser():
    try:
        driver = chromium()
    except BrowserUnavailable as e:
        pytest.skip(f"no headless Chromium: {e}")
    yield driver
    driver.quit()


def _column(driver, j: int) -> list[str]:
    return driver.execute_script(
        "return Array.from(document.querySelectorAll('#overview tbody tr'), r => r.cells[arguments[0]].dataset.v)", j)


def _best_shown(driver, j: int) -> tuple[float, bool, list[float]]:
    """Column j among the rows shown: its best value (in its direction), the direction, the values marked best."""
    higher = "higher" in driver.execute_script(
        "return document.querySelectorAll('#overview thead th')[arguments[0]].title", j)
    cells = driver.execute_script(
        "return Array.from(document.querySelectorAll('#overview tbody tr')).filter(r => !r.hidden)"
        ".map(r => [r.cells[arguments[0]].dataset.v, r.cells[arguments[0]].classList.contains('best'),"
        " r.cells[arguments[0]].textContent.endsWith('★')])", j)
    vals = [float(v) for v, _, _ in cells if v]
    assert all(b == star for _, b, star in cells)
    return (max(vals) if higher else min(vals)), higher, [float(v) for v, b, _ in cells if b]


def _visible_rows(driver) -> int:
    return driver.execute_script("return Array.from(document.querySelectorAll('#overview tbody tr')).filter(r => !r.hidden).length")


def test_overview_in_chromium_renders_sorts_filters_and_opens_an_upstream(small, browser):
    df = synthetic_runs(**SMALL)
    open_page(browser, small / "site" / "index.html")
    n = len(_overview_keys(df))
    assert _visible_rows(browser) == n
    assert browser.find_element(By.ID, "shown").text == f"{n} of {n} rows"

    head = browser.find_element(By.CSS_SELECTOR, '#overview th[data-task="phone_linear"][data-end="largest"]')
    before = _column(browser, 7)
    head.click()
    up = [float(v) for v in _column(browser, 7)]
    assert up == sorted(up) and up != [float(v) for v in before]
    assert head.get_attribute("aria-sort") == "ascending"
    head.click()
    down = [float(v) for v in _column(browser, 7)]
    assert down == sorted(down, reverse=True)
    params = browser.find_element(By.XPATH, '//table[@id="overview"]//th[text()="params"]')
    params.click()
    values = [float(v) for v in _column(browser, 3)]
    assert values == sorted(values)

    Select(browser.find_element(By.NAME, "mode")).select_by_value("last")
    assert _visible_rows(browser) == len(_overview_keys(df[df["mode"] == "last"]))
    for j in range(7, 11):  # the marks follow the rows shown: each column's best is the best of the last-layer rows
        best, higher, marked = _best_shown(browser, j)
        assert marked and all(v == best for v in marked), (j, best, marked)
    search = browser.find_element(By.NAME, "q")
    search.send_keys("MOCKING")
    assert _visible_rows(browser) == 2  # mockingjay and mockingjay_random, last layer
    assert browser.find_element(By.ID, "shown").text == f"2 of {n} rows"
    search.clear()
    search.send_keys(" ")  # an empty search shows every row the selects allow
    assert _visible_rows(browser) == len(_overview_keys(df[df["mode"] == "last"]))
    Select(browser.find_element(By.NAME, "family")).select_by_value("mockingjay")  # mockingjay and its control
    assert _visible_rows(browser) == 2
    Select(browser.find_element(By.NAME, "task")).select_by_value("speaker_utterance")
    assert not head.is_displayed()
    assert browser.find_element(By.CSS_SELECTOR, '#overview th[data-task="speaker_utterance"]').is_displayed()
    for name in ("mode", "family", "task"):
        Select(browser.find_element(By.NAME, name)).select_by_value("")
    assert _visible_rows(browser) == n and head.is_displayed()

    figures = browser.find_elements(By.CSS_SELECTOR, "#ablation-section .figure")
    assert len(figures) == 2
    shot = np.asarray(Image.open(io.BytesIO(figures[0].screenshot_as_png)).convert("RGB")).astype(int)
    coloured = int((shot.max(axis=-1) - shot.min(axis=-1) > 60).sum())  # lines, points, legend; not grey or white
    assert shot.shape[0] > 300 and coloured > 3000, f"the ablation plot drew {coloured} coloured pixels"
    assert console_errors(browser) == []

    link = browser.find_element(By.XPATH, '//table[@id="overview"]//a[text()="mockingjay:small"]')
    link.click()
    WebDriverWait(browser, 30).until(lambda d: d.current_url.endswith("upstream/mockingjay-small.html"))
    open_page(browser, small / "site" / "upstream" / "mockingjay-small.html")  # wait for its figures too
    assert browser.find_element(By.TAG_NAME, "h1").text == "mockingjay:small"
    rows = browser.execute_script("return document.querySelectorAll('#runs-table tbody tr').length")
    assert rows == int((df["upstream"] == "mockingjay").sum())
    assert console_errors(browser) == []
    for page in ("checks.html", "studies.html", "leaderboards.html"):
        open_page(browser, small / "site" / page)
        assert console_errors(browser) == [], page


def test_sorting_the_ten_thousand_row_site_takes_under_a_second(big, browser):
    results, _ = big
    open_page(browser, results / "site" / "index.html")
    assert _visible_rows(browser) == 9 * (1 + 4 * 7)
    clicks = "const t = performance.now(); arguments[0].click(); return performance.now() - t;"
    head = browser.find_element(By.CSS_SELECTOR, '#overview th[data-task="phone_linear"][data-end="largest"]')
    ms = browser.execute_script(clicks, head)
    col = next(i for i, th in enumerate(browser.find_elements(By.CSS_SELECTOR, "#overview thead th")) if th == head)
    vals = [float(v) if v else math.inf for v in _column(browser, col)]
    assert vals == sorted(vals) and ms < 1000, f"sorting the overview took {ms:.0f} ms"
    print(f"sorting the overview's {len(vals)} rows: {ms:.0f} ms")
    page = max((results / "site" / "upstream").glob("*.html"), key=lambda p: p.stat().st_size)
    open_page(browser, page)
    n = browser.execute_script("return document.querySelectorAll('#runs-table tbody tr').length")
    ms = browser.execute_script(clicks, browser.find_element(By.CSS_SELECTOR, "#runs-table thead th:nth-child(9)"))
    assert n > 600 and ms < 1000, f"sorting {n} rows took {ms:.0f} ms"
    print(f"sorting an upstream page's {n} rows: {ms:.0f} ms")
    assert console_errors(browser) == []
