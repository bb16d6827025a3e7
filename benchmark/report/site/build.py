"""Write results/site/: index.html (overview table, data-size ablation, provenance), leaderboards.html, checks.html,
studies.html and upstream/<upstream>-<preset>.html, with their stylesheet, script and BokehJS in assets/ and the
studies' figures in img/. Pages are Jinja2 templates (templates/); figures are Bokeh documents embedded in them.
Every script and style is a file of the folder, referenced relatively, so the pages open from the file system."""
from __future__ import annotations

import math
import re
from pathlib import Path

import bokeh
import pandas as pd
from bokeh.embed import components
from bokeh.util.paths import bokehjs_path
from jinja2 import Environment, FileSystemLoader, StrictUndefined, select_autoescape
from markdown_it import MarkdownIt

from benchmark.report.convergence import MARGIN_LARGEST, MARGIN_SMALLEST, certificate_summary
from benchmark.report.provenance import REPORT_COMMAND, command_of_rows, date_span, facts, strip_stamp
from benchmark.report.site.figures import ablation_figures
from benchmark.report.site.inputs import SiteInputs
from benchmark.report.site.overview import filter_marks, overview
from benchmark.report.site.upstreams import Table, table, upstream_pages
from benchmark.report.tables import fmt_count, fmt_seconds, leaderboard_display
from core.io import atomic_write_bytes, atomic_write_text

HERE = Path(__file__).resolve().parent
BOKEH_JS = f"bokeh-{bokeh.__version__}.min.js"
ASSETS = ("site.css", "site.js")
VERDICT_CLASS = {"holds": "ok", "holds, within noise": "warn", "mixed": "warn", "does not hold": "bad",
                 "not enough data": "na"}


class Writer:
    """Writes the folder's files atomically and remembers them, so files of an older build can be removed."""

    def __init__(self, out: Path, results_dir: Path) -> None:
        self.out, self.results_dir, self.written = out, results_dir, set()

    def text(self, rel: str, text: str) -> None:
        atomic_write_text(self.out / rel, text)
        self.written.add(self.out / rel)

    def copy(self, src: Path, rel: str) -> None:
        dst = self.out / rel
        data = src.read_bytes()
        if not (dst.is_file() and dst.read_bytes() == data):  # unchanged files keep their time stamps
            atomic_write_bytes(dst, data)
        self.written.add(dst)

    def image(self, rel_to_results: str) -> str:
        """Copy a figure of the results folder into img/ once; its path relative to the site's root."""
        name = "img/" + re.sub(r"[^A-Za-z0-9_.-]+", "-", rel_to_results)
        src = self.results_dir / rel_to_results
        if not src.is_file():
            raise FileNotFoundError(f"{src}: a figure the report links to is missing")
        if self.out / name not in self.written:
            self.copy(src, name)
        return name

    def remove_stale(self) -> None:
        for pattern in ("*.html", "upstream/*.html", "img/*", "assets/*"):
            for p in self.out.glob(pattern):
                if p.is_file() and p not in self.written:
                    p.unlink()


_UUID = re.compile(r"[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}")


def _components(figs: dict, prefix: str) -> tuple[str, dict[str, str]]:
    """Bokeh's embedding (one script, one div per figure) with its random document and element ids replaced by ids
    numbered per page, so that rebuilding the same rows rewrites the same bytes (the pages are committed)."""
    if not figs:
        return "", {}
    script, divs = components(figs)
    ids: dict[str, str] = {}
    stable = lambda m: ids.setdefault(m.group(0), f"{prefix}-bk-{len(ids)}")  # noqa: E731
    return _UUID.sub(stable, script), {k: _UUID.sub(stable, d) for k, d in divs.items()}


def _env() -> Environment:
    env = Environment(loader=FileSystemLoader(HERE / "templates"), autoescape=select_autoescape(["html"]),
                      undefined=StrictUndefined, trim_blocks=True, lstrip_blocks=True, keep_trailing_newline=True)
    env.filters.update(count=fmt_count, seconds=fmt_seconds, pct=lambda f: f"{100 * f:g} %",
                       num=lambda v: "" if v is None or (isinstance(v, float) and math.isnan(v)) else f"{v:.6g}")
    return env


def _markdown(text: str, writer: Writer, root: str) -> str:
    """A REPORT.md section as HTML; its images (paths relative to the results folder) copied into img/."""
    md = MarkdownIt("commonmark", {"html": False}).enable("table")

    def image(self, tokens, idx, options, env):
        tok = tokens[idx]
        tok.attrSet("src", root + writer.image(str(tok.attrGet("src"))))
        return self.image(tokens, idx, options, env)

    md.add_render_rule("image", image)
    return md.render(text)


def _certificate(cert: pd.DataFrame | None) -> dict | None:
    if cert is None or cert.empty:
        return None
    s = certificate_summary(cert)
    c = cert.assign(gap=cert["probe_test"] - cert["reference_test"])
    groups = c.groupby(["upstream", "preset", "task", "fraction"], sort=True).agg(
        rows=("passes", "size"), passing=("passes", "sum"), gap=("gap", "mean"), worst=("gap", "min")).reset_index()
    group_rows = [dict(upstream=f"{g.upstream}:{g.preset}", task=g.task, fraction=f"{g.fraction:g}",
                       passing=f"{int(g.passing)}/{int(g.rows)}", gap=f"{g.gap:+.2f}", worst=f"{g.worst:+.2f}",
                       cls="ok" if g.passing == g.rows else "bad") for g in groups.itertuples()]
    fails = s.failing
    failing = Table(["upstream", "task", "mode", "layer", "fraction", "seed", "probe dev", "reference dev", "probe test",
                     "reference test", "margin"],
                    [[f"{r.upstream}:{r.preset}", r.task, r.mode, str(r.layer), f"{r.fraction:g}", str(r.seed),
                      f"{r.probe_dev:.2f}", f"{r.reference_dev:.2f}", f"{r.probe_test:.2f}", f"{r.reference_test:.2f}",
                      f"{r.margin:g}"] for r in fails.itertuples()])
    return dict(summary=s, groups=group_rows, failing=failing, margins=(MARGIN_LARGEST, MARGIN_SMALLEST))


def build_site(inputs: SiteInputs, out: Path) -> Path:
    """Write the site for `inputs` into `out` (results/site); returns index.html's path."""
    out = Path(out)
    w = Writer(out, Path(inputs.results_dir))
    env = _env()
    for name in ASSETS:
        w.copy(HERE / "assets" / name, f"assets/{name}")
    w.copy(Path(bokehjs_path()) / "js" / "bokeh.min.js", f"assets/{BOKEH_JS}")

    cmd_index = command_of_rows(inputs.runs, inputs.commands)
    pages = upstream_pages(inputs, cmd_index)
    page_of = {(p.upstream, p.preset): f"upstream/{p.slug}.html" for p in pages}
    cols, rows = overview(inputs.agg)
    mark_choices, marks = filter_marks(cols, rows)
    common = dict(n_runs=len(inputs.runs), dates=date_span(inputs.runs), report_command=REPORT_COMMAND,
                  upstream_links=[(f"{p.upstream}:{p.preset}", page_of[(p.upstream, p.preset)]) for p in pages],
                  bokeh_js=BOKEH_JS)

    figs = ablation_figures(inputs.agg)
    script, divs = _components(figs, "index")
    commands = [(i + 1, *strip_stamp(c)) for i, c in enumerate(inputs.commands)]
    rows_per_command = cmd_index.value_counts().to_dict()
    w.text("index.html", env.get_template("index.html").render(
        **common, root="", title="Overview", columns=cols, rows=rows, page_of=page_of, mark_choices=mark_choices,
        marks=marks,
        tasks=sorted({c.task for c in cols}), modes=sorted({r.mode for r in rows}),
        families=sorted({r.family for r in rows}), budgets=len({r.budget for r in rows}) > 1,
        ablation=divs, bokeh_script=script, facts=facts(inputs.runs), commands=commands,
        rows_per_command=rows_per_command, unmatched=int((cmd_index < 0).sum())))

    boards = {task: table(leaderboard_display(lb, task)) for task, lb in inputs.boards.items()}
    fractions = {task: (float(lb["fraction"].iloc[0]), float(lb["train_utts"].iloc[0])) for task, lb in inputs.boards.items()}
    w.text("leaderboards.html", env.get_template("leaderboards.html").render(
        **common, root="", title="Leaderboards", boards=boards, fractions=fractions, bokeh_script=""))

    checks = [dict(claim=c.claim, verdict=c.verdict, detail=c.detail, cls=VERDICT_CLASS.get(c.verdict, "na"))
              for c in inputs.checks]
    w.text("checks.html", env.get_template("checks.html").render(
        **common, root="", title="Science checks and convergence", checks=checks,
        certificate=_certificate(inputs.certificate), bokeh_script=""))

    sections = {title: _markdown(text, w, "") for title, text in inputs.sections.items()}
    w.text("studies.html", env.get_template("studies.html").render(
        **common, root="", title="Studies, attention and cost", sections=sections, bokeh_script=""))

    upstream_tpl = env.get_template("upstream.html")
    for p in pages:
        pfigs = {k: f for k, f in (("weights", p.weight_figure), ("layers", p.layer_figure)) if f is not None}
        pscript, pdivs = _components(pfigs, p.slug)
        maps = "../" + w.image(str(Path("attention") / "attention_maps.png")) if p.attention_maps else None
        w.text(f"upstream/{p.slug}.html", upstream_tpl.render(
            **common, root="../", title=f"{p.upstream}:{p.preset}", page=p, figs=pdivs, bokeh_script=pscript,
            attention_maps=maps))
    w.remove_stale()
    return out / "index.html"
