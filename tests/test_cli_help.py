"""Help that documents itself: every option of every subcommand says what it does and, where it
has one, its default."""

import argparse

from skysub.cli import build_parser

SKIP = (argparse._HelpAction, argparse._VersionAction, argparse._SubParsersAction)


def _shown(default) -> list[str]:
    """Ways a help text may state this default."""
    if isinstance(default, float | int) and not isinstance(default, bool):
        return [format(default, "g"), str(default)]
    if isinstance(default, tuple | list):
        return [" ".join(_shown(v)[0] for v in default)]
    return [str(default)]


def _walk(parser, path):
    for a in parser._actions:
        if isinstance(a, argparse._SubParsersAction):
            for name, sp in a.choices.items():
                yield from _walk(sp, [*path, name])
        elif not isinstance(a, SKIP):
            yield " ".join(path), a


def test_every_option_has_help_with_its_default():
    problems = []
    for where, a in _walk(build_parser(), ["skysub"]):
        name = "/".join(a.option_strings) or a.dest
        h = a.help or ""
        if not h.strip() or h == argparse.SUPPRESS:
            problems.append(f"{where} {name}: no help")
            continue
        d = a.default
        if a.option_strings and d not in (None, False, argparse.SUPPRESS) and d != []:
            if "default" not in h.lower() and not any(s in h for s in _shown(d)):
                problems.append(f"{where} {name}: help does not give the default {d!r}")
    assert not problems, "\n".join(problems)


def test_the_walk_sees_every_command():
    seen = {w for w, _ in _walk(build_parser(), ["skysub"])}
    for cmd in ("skysub background", "skysub photometry", "skysub train bkgnet",
                "skysub train lumos", "skysub train inpaint", "skysub remove", "skysub batch",
                "skysub inject", "skysub evaluate removal", "skysub timeseries photometry"):
        assert cmd in seen, cmd
