"""``fcgpu report``: benchmark results JSON (one or several machines) -> report.md and
PNG plots."""
from __future__ import annotations


def add_arguments(p):
    p.add_argument("results", nargs="+", metavar="RESULTS.json",
                   help="results written by `fcgpu bench` (several: one page)")
    p.add_argument("--out", required=True, metavar="DIR", help="folder for report.md and PNGs")
    p.add_argument("--title", default=None, help="the page's title")
    p.add_argument("--notes", default=None, metavar="NOTES.md",
                   help="Markdown placed after the summary: why a target was missed, what "
                        "else ran on the machine")


def run(args):
    try:
        import matplotlib  # noqa: F401
    except ImportError:
        raise ValueError("fcgpu report needs matplotlib: pip install 'fcgpu[plot]'") from None
    from ..bench import report
    results = report.load(args.results)
    notes = None
    if args.notes:
        with open(args.notes, encoding="utf-8") as f:
            notes = f.read()
    path = report.render(results, args.out, title=args.title, notes=notes)
    print("fcgpu report: wrote %s" % path)
    return 0
