"""`python -m analysis.report OUTPUTS_DIR`: every run below a directory -> tables and plots.

Writes runs.csv, epochs.csv, report.md, PNG plots and index.html to OUTPUTS_DIR/report/
(or --out DIR). It never deletes anything it did not write: the names of the files it wrote
are kept in DIR/.report-files, and a file of another name in the way is refused. Exit code 2,
with one line, when there is nothing to report or the output folder is not the report's.
"""

from __future__ import annotations

import html
import os
import re
import shutil
import sys
import tempfile
from dataclasses import dataclass, field
from pathlib import Path

from analysis import insight, plots, study
from analysis.collect import EPOCHS_CSV, RUNS_CSV, Collection, collect
from analysis.tables import Table, build_tables, label, markdown, write_runs_csv
from sweeper.errors import OneLineParser, StorageError, SweeperError
from sweeper.records import CONFIG_DIR, METRICS_FILE, Status

REFERENCES = ("seed",)  # the assignment report's numbers, shipped in sweeper/reference/
MANIFEST = ".report-files"  # what the last report wrote here: the only files it may replace
WRITTEN = (".md", ".html", ".csv", ".png", ".json")  # the kinds of file a report writes


class ReportError(SweeperError):
    """Nothing to report, or nowhere safe to write it: the message is the one line shown."""


def build(root: Path, out: Path, reference: str | None = None, reports: bool = False) -> list[str]:
    """Write the report into `out`, replacing only what an earlier report wrote there; returns
    problem lines. With `reports`, the runs recorded by earlier reports under `root` (but `out`)
    count too. Raises ReportError before writing anything when it cannot, StorageError when the
    disk refuses (what was in `out` stays as it was)."""
    try:
        return _build(root, out, reference, reports)
    except OSError as err:  # read-only, under a file, disk full
        raise StorageError(f"cannot write the report to {out}: {err.strerror or err}"
                           f"{f' ({err.filename})' if err.filename else ''}") from None


def _build(root: Path, out: Path, reference: str | None, reports: bool) -> list[str]:
    studies, unreadable = study.find(root)
    col = collect(root, exclude=set().union(*(s.run_dirs() for s in studies), {out.resolve()}),
                  reports=reports)
    col.problems += unreadable
    ours = _previous_files(out)  # first: a run directory given as --out is named as such
    if col.runs.empty and not studies:
        raise ReportError(f"no runs with a usable metrics.csv under {root}"
                          + (f" ({len(col.problems)} skipped)" if col.problems else ""))
    out.parent.mkdir(parents=True, exist_ok=True)
    tables = build_tables(col, reference is not None) if not col.runs.empty else []
    staging = Path(tempfile.mkdtemp(prefix=".report-", dir=out.parent))
    try:
        _write(root, col, tables, studies, staging, reference)
        _install(staging, out, ours)
    finally:
        for leftover in staging.iterdir():
            leftover.unlink()
        staging.rmdir()
    refused = tensorboard_view(root, col, out)
    return col.problems + ([refused] if refused else [])


TENSORBOARD = "tensorboard"  # the report's view of the runs' event files, one folder per run
VIEW_MARK = ".report-view"  # in a tensorboard/ folder the report made (and may remake)


def tensorboard_view(root: Path, col: Collection, out: Path) -> str | None:
    """`out/tensorboard/<settings>/`: each run's event files, hard-linked (copied across file
    systems), under the settings that set it apart, so `tensorboard --logdir out/tensorboard`
    names runs by what differs, not by their directories. Returns a problem line or None."""
    runs = [(r, root / r["run"] / TENSORBOARD) for _, r in col.runs.iterrows()]
    runs = [(r, d) for r, d in runs if d.is_dir()]
    view = out / TENSORBOARD
    if view.exists() and not (view / VIEW_MARK).is_file():
        return f"{view} was not made by a report: left as it is, no TensorBoard view written"
    if view.exists():
        shutil.rmtree(view)
    if not runs:
        return None
    view.mkdir()
    (view / VIEW_MARK).write_text("made by python -m analysis.report; remade by each report\n")
    taken: set[str] = set()
    for run, events in runs:
        name = label({**{k: run.get(k) for k in col.settings}, "seed": run.get("seed")})
        name = name.replace("/", "_").replace(", ", " ")
        while name in taken:
            name += "+"
        taken.add(name)
        for source in events.rglob("*"):
            if source.is_file():
                target = view / name / source.relative_to(events)
                target.parent.mkdir(parents=True, exist_ok=True)
                try:
                    os.link(source, target)  # the same file: a run still writing shows live
                except OSError:
                    shutil.copy2(source, target)
    return None


def _previous_files(out: Path) -> set[str]:
    """Names an earlier report wrote in `out`. Refuses a folder that holds a run."""
    if not out.exists():
        return set()
    if not out.is_dir():
        raise ReportError(f"--out {out} is a file, not a folder")
    if (out / METRICS_FILE).exists() or (out / CONFIG_DIR).exists():
        raise ReportError(f"--out {out} is a run directory: choose a folder of its own")
    try:
        listed = (out / MANIFEST).read_text(errors="replace").split()
    except OSError:
        return set()
    return {name for name in listed if _ours(out, name)}


def _ours(out: Path, name: str) -> bool:
    """A name the report writes (a bare file name of its kinds), standing in `out` as a regular
    file or not at all: a tampered list naming ../x, /x, a folder or a link removes nothing."""
    if Path(name).name != name or name.startswith(".") or not name.endswith(WRITTEN):
        return False
    path = out / name
    return not path.is_symlink() and (path.is_file() or not path.exists())


def _install(staging: Path, out: Path, ours: set[str]) -> None:
    """Move the new files into `out`; remove files of the earlier report that are not made again.
    A file of the same name that no report wrote is never overwritten."""
    new = sorted(p.name for p in staging.iterdir())
    taken = [n for n in new if (out / n).exists() and n not in ours]
    if taken:
        raise ReportError(f"--out {out} already holds {', '.join(taken[:3])}"
                          f"{' ...' if len(taken) > 3 else ''}, not written by a report: "
                          f"choose an empty or new folder")
    out.mkdir(parents=True, exist_ok=True)
    for name in new:
        os.replace(staging / name, out / name)
    for name in ours - set(new):
        (out / name).unlink(missing_ok=True)
    tmp = out / f"{MANIFEST}.tmp"
    tmp.write_text("\n".join(new) + "\n")
    os.replace(tmp, out / MANIFEST)


@dataclass
class Section:
    title: str
    text: str
    tables: list[tuple[str, str]] = field(default_factory=list)  # (caption, markdown table)
    images: list[tuple[str, str]] = field(default_factory=list)  # (png name, caption)


def _section(table: Table, col: Collection, root: Path, staging: Path,
             reference: str | None) -> Section:
    name = plots.slug(table.title)
    section = Section(table.title, table.verdict, [("", markdown(table))])
    section.images += [
        (plots.curves(table, col.epochs, staging / f"{name}_curves.png",
                      col.configs if reference else None).name, ""),
        (plots.final_bars(table, staging / f"{name}_final.png").name, ""),
    ]
    per_class = insight.per_class_markdown(table, root)
    if per_class:
        section.tables.append(per_class)
    best = next(iter(insight.complete_runs(table).items()), None)
    if best is not None:
        made = insight.confusion_figure(f"{best[0]}: confusion", best[1], root,
                                        staging / f"{name}_confusion.png")
        if made:
            section.images.append((made.name, insight.CAPTIONS["confusion"]))
    rotation = [r for r in table.runs[table.runs["status"] == Status.COMPLETE]["run"]
                if (root / r / "rotation_confusion.csv").exists()]
    if rotation:
        made = insight.confusion_figure("rotation pretext: confusion", rotation, root,
                                        staging / f"{name}_rotation_confusion.png",
                                        "rotation_confusion.csv")
        section.images.append((made.name, insight.CAPTIONS["rotation"]))
    for kind, draw in (("attention", insight.attention_figure), ("distance", insight.distance_figure),
                       ("position", insight.position_figure)):
        made = draw(table, root, staging / f"{name}_{kind}.png")
        if made:
            section.images.append((made.name, insight.CAPTIONS[kind]))
    return section


def _study_section(found: study.Study, root: Path, staging: Path) -> Section:
    name = plots.slug(f"study {found.about.get('study')}")
    section = Section(f"Hyper-parameter study {found.about.get('study')} "
                      f"({found.folder.relative_to(root)})",
                      study.summary_text(found),
                      [("Search space:", study.space_markdown(found)),
                       ("Trials, best validation accuracy first:", study.trials_markdown(found))])
    section.images.append((study.history_figure(found, staging / f"{name}_history.png").name,
                           study.CAPTIONS["history"]))
    made = study.importance_figure(found, staging / f"{name}_importance.png")
    if made:
        section.images.append((made.name, study.CAPTIONS["importance"]))
    return section


def _write(root: Path, col: Collection, tables: list[Table], studies: list[study.Study],
           staging: Path, reference: str | None) -> None:
    sections = [_section(table, col, root, staging, reference) for table in tables]
    sections += [_study_section(found, root, staging) for found in studies]
    if not col.runs.empty:
        write_runs_csv(col, staging / RUNS_CSV)
        col.epochs.to_csv(staging / EPOCHS_CSV, index=False)
        times = plots.run_times(col.runs, col.settings, staging / "run_times.png").name
        sections.append(Section("Time per run", "", images=[(times, "")]))
    boards = sum((root / r / TENSORBOARD).is_dir() for r in col.runs.get("run", []))
    if boards:
        sections.append(Section("TensorBoard", (
            f"{boards} run(s) logged TensorBoard events: `tensorboard --logdir {TENSORBOARD}`, "
            f"run in this report's folder, shows each named by the settings that set it apart "
            f"(the folder links the runs' event files; each report remakes it).")))
    if col.problems:
        sections.append(Section("Skipped", "\n".join(f"- {p}" for p in col.problems)))

    intro = (f"{len(col.runs)} run{'' if len(col.runs) == 1 else 's'}; statuses: "
             + ", ".join(f"{s} {n}" for s, n in col.runs["status"].value_counts().items()) + "."
             if not col.runs.empty else "No runs outside the studies.")
    if studies:
        intro += (f" {len(studies)} hyper-parameter "
                  f"{'study' if len(studies) == 1 else 'studies'}, reported in "
                  f"{'its' if len(studies) == 1 else 'their'} own section.")
    if reference is not None:
        intro += ("\n\nReference: the assignment report's own numbers (dashed lines, `report` "
                  "columns), from `sweeper/reference/seed_results.csv`. \"Above it after\" is the "
                  "time to the report's answer: the first epoch by which every complete run of "
                  "the setting had scored above the report's final test accuracy, and the training "
                  "time the slowest of them took to get there.")
    md = [f"# Report: {md_text(str(root))}", "", intro, ""]
    for sec in sections:
        md += [f"## {md_text(sec.title)}", ""] + ([md_text(sec.text), ""] if sec.text else [])
        for caption, table_md in sec.tables:
            md += ([md_text(caption), ""] if caption else []) + [table_md, ""]
        for png, caption in sec.images:
            md += [f"![{md_text(sec.title)}]({png})", ""] + ([md_text(caption), ""] if caption else [])
    (staging / "report.md").write_text("\n".join(md))
    (staging / "index.html").write_text(_html(root, intro, sections))


def md_text(text: str) -> str:
    """Text from run and folder names as Markdown shows it: never raw HTML for a previewer."""
    return text.replace("&", "&amp;").replace("<", "&lt;").replace(">", "&gt;")


def html_text(text: str) -> str:
    """Escaped, with Markdown's `code` spans as <code>."""
    return re.sub(r"`([^`]+)`", r"<code>\1</code>", html.escape(text))


def _html(root: Path, intro: str, sections: list[Section]) -> str:
    title = html.escape(str(root))
    parts = [f"<!doctype html><html><head><meta charset='utf-8'><title>Report: {title}</title>",
             "<style>body{font-family:sans-serif;max-width:1200px;margin:2em auto;padding:0 1em}"
             "table{border-collapse:collapse;margin:1em 0}td,th{border:1px solid #ccc;padding:4px 8px;"
             "text-align:right}td:first-child,th:first-child{text-align:left}img{max-width:100%}</style>",
             f"</head><body><h1>Report: {title}</h1>"]
    parts += [f"<p>{html_text(p)}</p>" for p in intro.split("\n\n")]
    for sec in sections:
        parts.append(f"<h2>{html_text(sec.title)}</h2>")
        if sec.text.startswith("- "):
            parts.append("<ul>" + "".join(f"<li>{html_text(line[2:])}</li>"
                                          for line in sec.text.splitlines()) + "</ul>")
        elif sec.text:
            parts.append(f"<p>{html_text(sec.text)}</p>")
        for caption, table_md in sec.tables:
            parts += ([f"<p>{html_text(caption)}</p>"] if caption else []) + [_md_table_to_html(table_md)]
        for png, caption in sec.images:
            parts.append(f"<figure><img src='{png}' alt='{html.escape(sec.title)}'>"
                         + (f"<figcaption>{html_text(caption)}</figcaption>" if caption else "")
                         + "</figure>")
    return "\n".join(parts) + "</body></html>\n"


def _md_table_to_html(md: str) -> str:
    lines = md.splitlines()
    cells = [[c.strip() for c in line.strip("|").split("|")] for line in lines]
    head, body = cells[0], cells[2:]

    def cell(text: str, tag: str) -> str:
        if text.startswith("**") and text.endswith("**"):
            return f"<{tag}><b>{html.escape(text[2:-2])}</b></{tag}>"
        return f"<{tag}>{html.escape(text)}</{tag}>"

    rows = ["<tr>" + "".join(cell(c, "th") for c in head) + "</tr>"]
    rows += ["<tr>" + "".join(cell(c, "td") for c in row) + "</tr>" for row in body]
    return "<table>" + "".join(rows) + "</table>"


def main(argv: list[str] | None = None) -> int:
    parser = OneLineParser(prog="python -m analysis.report", description=__doc__)
    parser.add_argument("root", type=Path, help="a directory of runs, e.g. outputs/")
    parser.add_argument("--out", type=Path, help="where to write (default: ROOT/report)")
    parser.add_argument("--reference", choices=REFERENCES,
                        help="overlay a reference's numbers (seed: the assignment report's)")
    parser.add_argument("--reports", action="store_true",
                        help="also count the runs that earlier reports under ROOT recorded in "
                             "their runs.csv and epochs.csv (not --out's): merges reports made "
                             "on several machines")
    args = parser.parse_args(argv)
    if not args.root.is_dir():
        return ReportError(f"{args.root} is not a directory of runs").show()
    out = (args.out or args.root / "report").resolve()
    try:
        problems = build(args.root, out, args.reference, args.reports)
    except SweeperError as err:  # the report's one place where an error becomes a line
        return err.show()
    for problem in problems:
        print(f"skipped: {problem}")
    written = [n for n in ("report.md", "index.html", RUNS_CSV, EPOCHS_CSV) if (out / n).exists()]
    print(f"report written to {out} ({', '.join(written)}, PNG plots)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
