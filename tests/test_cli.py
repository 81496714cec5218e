"""The fcgpu command's help texts: plain text, no reStructuredText markup."""
import re

import pytest

from fcgpu.cli import SUBCOMMANDS, build_parser, main

MARKUP = re.compile(r"``|:(func|class|meth|mod|attr|data):`")


def test_help_is_plain_text(capsys):
    with pytest.raises(SystemExit) as exc:
        main(["--help"])
    assert exc.value.code == 0
    texts = {"fcgpu": capsys.readouterr().out}
    parser = build_parser()
    sub = next(a for a in parser._actions if a.dest == "command")
    for name, p in sub.choices.items():
        texts["fcgpu " + name] = p.format_help()
    assert {"fcgpu train", "fcgpu evaluate"} <= set(texts)
    assert set(texts) - {"fcgpu"} <= {"fcgpu " + n for n in SUBCOMMANDS}
    for name, text in texts.items():
        assert not MARKUP.search(text), "%s --help shows markup:\n%s" % (name, text)
