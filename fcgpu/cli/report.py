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
    """Errors of the input (matplotlib missing, an unreadable --notes file, results that
    are unreadable, not JSON or not fcgpu's) are ConfigError or DataError: one line."""
    from ..errors import ConfigError
    try:
        import matplotlib  # noqa: F401
    except ImportError:
        raise ConfigError("fcgpu report needs matplotlib: pip install 'fcgpu[plot]'") from None
    from ..bench import report
    from ..bench.runner import make_dir
    results = report.load(args.results)
    make_dir(args.out)
    notes = None
    if args.notes:
        try:
            with open(args.notes, encoding="utf-8") as f:
                notes = f.read()
        except (OSError, UnicodeDecodeError) as exc:
            raise ConfigError("--notes %s cannot be read: %s"
                              % (args.notes, getattr(exc, "strerror", None) or exc)) from None
    path = report.render(results, args.out, title=args.title, notes=notes)
    print("fcgpu report: wrote %s" % path)
    return 0

