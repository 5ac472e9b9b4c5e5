"""One self-contained HTML page of a scale's results: the claims, every table, every figure, and the
scale's studies.

    python -m replication.reporting.report --scale cpu     # writes results/cpu/report.html

The page is built from the files under ``results/<scale>/`` alone (``CLAIMS.md``, each experiment's
``table.md`` and figure PNGs, and after the experiments each study's ``study/<experiment>/README.md``
with its figures, where the scale has one: ``replication.reporting.study``) and from the experiments'
``config.yaml`` (each figure's title and caption), so it is the same on the machine that ran the DAG
and on a fresh clone holding only the committed results. Tables are rendered into the page
(Python-Markdown), figures are embedded as data URIs, and a claim's link to a figure jumps to that
figure. Snakemake's own ``--report`` is not used: it needs the run metadata of the machine that
executed each job, which a clone never has.
"""

from __future__ import annotations

import argparse
import base64
import html
import os
import re
import sys
from dataclasses import dataclass, field
from pathlib import Path

import markdown

from replication.config.report import ReportSpec, load_report_spec
from replication.dag.schema import defaults
from replication.runtime import cli

STYLE = """
body { font-family: system-ui, -apple-system, "Segoe UI", sans-serif; max-width: 1200px; margin: 2em auto;
       padding: 0 1em; color: #222; line-height: 1.45; }
table { border-collapse: collapse; font-size: 0.82em; margin: 1em 0; display: block; overflow-x: auto; }
th, td { border: 1px solid #ccc; padding: 0.25em 0.5em; vertical-align: top; }
th { background: #f2f2f2; }
tr:nth-child(even) td { background: #fafafa; }
figure { margin: 1.5em 0; border-top: 1px solid #ddd; padding-top: 1em; }
figure img { max-width: 100%; }
figcaption { font-size: 0.9em; color: #333; max-width: 60em; }
code { background: #f4f4f4; padding: 0 0.2em; }
nav a { margin-right: 1em; }
.missing { color: #a00; }
"""


@dataclass
class Page:
    """What the page holds; ``missing`` names every expected file that was not there."""

    scale: str
    sections: list[str] = field(default_factory=list)
    missing: list[str] = field(default_factory=list)
    experiments: int = 0
    figures: int = 0
    studies: int = 0


def _anchor(experiment: str, stem: str) -> str:
    return f"{experiment}-{stem}"


def _markdown(text: str, *, shift_headings: int = 0) -> str:
    if shift_headings:
        text = re.sub(r"^(#+)", lambda m: "#" * min(6, len(m.group(1)) + shift_headings), text, flags=re.M)
    return markdown.markdown(text, extensions=["tables"], output_format="html")


def _link_figures_in_page(text: str) -> str:
    """``[curves.png](EXPERIMENT/curves.png)`` in CLAIMS.md becomes a link to that figure in the page."""
    return re.sub(
        r"\]\(([a-z0-9_]+)/([A-Za-z0-9_.-]+)\.png\)", lambda m: f"](#{_anchor(m.group(1), m.group(2))})", text
    )


def _figure_html(spec: ReportSpec, number: int, results: Path, page: Page, link_base: str) -> list[str]:
    """Each figure embedded, with its number, title and caption; ``link_base`` leads from the page to
    ``results`` (for the PDF links)."""
    out = []
    for figure in spec.figures:
        path = results / spec.experiment / f"{figure.file}.png"
        if not path.is_file():
            page.missing.append(str(path))
            out.append(
                f'<p class="missing" id="{_anchor(spec.experiment, figure.file)}">'
                f"missing: {html.escape(str(path))}</p>"
            )
            continue
        number += 1
        data = base64.b64encode(path.read_bytes()).decode("ascii")
        title = html.escape(figure.title or figure.file)
        pdf = html.escape(f"{link_base}/{spec.experiment}/{figure.file}.pdf".removeprefix("./"))
        caption = _markdown(
            f"**Figure {number}. {figure.title or figure.file}.** {figure.caption} ([PDF]({pdf}))"
        )
        out.append(
            f'<figure id="{_anchor(spec.experiment, figure.file)}">'
            f'<img alt="{title}" src="data:image/png;base64,{data}">'
            f"<figcaption>{caption}</figcaption></figure>"
        )
    return out


def _study_html(experiment: str, results: Path, page: Page) -> str | None:
    """The study of one experiment at this scale (``results/study/<experiment>/README.md``) with its
    figures embedded, or None where the scale has no such study. Its headings sit one level below the
    page's title, as the experiments' do."""
    folder = results / "study" / experiment
    readme = folder / "README.md"
    if not readme.is_file():
        return None

    def embed(match: re.Match) -> str:
        alt, path = match.group(1), folder / match.group(2)
        if not path.is_file():
            page.missing.append(str(path))
            return f'<p class="missing">missing: {html.escape(str(path))}</p>'
        data = base64.b64encode(path.read_bytes()).decode("ascii")
        return f'<img alt="{html.escape(alt)}" src="data:image/png;base64,{data}">'

    text = re.sub(r"!\[([^\]]*)\]\(([A-Za-z0-9_.-]+\.png)\)", embed, readme.read_text(encoding="utf-8"))
    page.studies += 1
    return f'<section id="study-{experiment}">' + _markdown(text, shift_headings=1) + "</section>"


def build(
    scale: str,
    results_root: Path,
    experiments_dir: Path,
    experiments: list[str] | None = None,
    out: Path | None = None,
) -> Page:
    """The page of one scale (to be written at ``out``, by default ``RESULTS/SCALE/report.html``);
    raises FileNotFoundError when the scale has no results at all."""
    results = results_root / scale
    out = out or results / "report.html"
    link_base = Path(os.path.relpath(results.resolve(), out.resolve().parent)).as_posix()
    if experiments is None:  # the DAG's order first, then any other experiment with results
        present = (
            {p.name for p in results.iterdir() if (p / "table.md").is_file()} if results.is_dir() else set()
        )
        order = [name for name in defaults()["experiments"] if name in present]
        experiments = order + sorted(present - set(order))
    if not experiments:
        raise FileNotFoundError(
            f"{results} holds no experiment's results: run the scale first (make replicate SCALE={scale})"
        )
    page = Page(scale)
    specs = [load_report_spec(experiments_dir / name / "config.yaml") for name in experiments]
    claims = results / "CLAIMS.md"
    nav = [f'<a href="#{s.experiment}">{s.experiment}</a>' for s in specs]
    studies = [s.experiment for s in specs if (results / "study" / s.experiment / "README.md").is_file()]
    nav += [f'<a href="#study-{e}">study: {e}</a>' for e in studies]
    page.sections.append(f"<h1>GAPT replication: results at <code>{html.escape(scale)}</code> scale</h1>")
    page.sections.append(
        "<nav>" + " ".join((['<a href="#claims">claims</a>'] if claims.is_file() else []) + nav) + "</nav>"
    )
    if claims.is_file():
        text = _link_figures_in_page(claims.read_text(encoding="utf-8"))
        page.sections.append('<section id="claims">' + _markdown(text, shift_headings=1) + "</section>")
    else:
        page.missing.append(str(claims))
    figure_number = 0
    for spec in specs:
        section = [f'<section id="{spec.experiment}">']
        table = results / spec.experiment / "table.md"
        if table.is_file():
            section.append(_markdown(table.read_text(encoding="utf-8"), shift_headings=1))
        else:
            page.missing.append(str(table))
            section.append(
                f"<h2>{spec.experiment}</h2><p class='missing'>missing: {html.escape(str(table))}</p>"
            )
        figures = _figure_html(spec, figure_number, results, page, link_base)
        figure_number += sum(1 for f in figures if f.startswith("<figure"))
        section += figures
        page.experiments += 1
        section.append("</section>")
        page.sections.append("\n".join(section))
    page.figures = figure_number
    page.sections += [section for e in studies if (section := _study_html(e, results, page))]
    return page


def render(page: Page) -> str:
    return (
        "<!DOCTYPE html>\n<html lang='en'><head><meta charset='utf-8'>"
        f"<title>GAPT replication: {html.escape(page.scale)} scale</title>"
        f"<style>{STYLE}</style></head><body>\n" + "\n".join(page.sections) + "\n</body></html>\n"
    )


def main(argv: list[str] | None = None) -> int:
    parser = cli.parser("replication.reporting.report", __doc__)
    parser.add_argument("--scale", required=True, help="smoke, cpu, gpu1 or paper")
    parser.add_argument(
        "--results", type=Path, default=Path("results"), help="the results root (default: results)"
    )
    parser.add_argument("--experiments-dir", type=Path, default=Path("experiments"))
    parser.add_argument("--out", type=Path, default=None, help="default: RESULTS/SCALE/report.html")
    return cli.run(_main, parser.parse_args(argv))


def _main(args: argparse.Namespace) -> int:
    out = args.out or args.results / args.scale / "report.html"
    page = build(args.scale, args.results, args.experiments_dir, out=out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(render(page), encoding="utf-8")
    for path in page.missing:
        print(f"warning: not in the report, missing: {path}", file=sys.stderr)
    print(
        f"{out}: {page.experiments} experiments, {page.figures} figures, {page.studies} studies",
        file=sys.stderr,
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
