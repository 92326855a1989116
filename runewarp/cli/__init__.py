"""The command line: one usage doc per command (its `--help`), dispatched from one table.

A command is (words, usage doc, function). The longest command whose words
lead the arguments parses them with docopt; a usage error becomes one line
naming the command, plus where its help is.
"""

import os
import re
import sys
from pathlib import Path

from docopt import DocoptExit, docopt

from .. import __version__, config as configuration
from ..errors import ConfigError, MaterialError
from ..io.listener import BindError
from ..systemd import ActivationError
from . import background, ca, config, demo, doctor, material, proxy, run, status
from .common import fail

GROUPS = ("server", "client", "ca", "config", "doctor", "proxy", "demo")
# In help order: grouped by first word, each group in the order its module lists it.
COMMANDS = tuple(sorted((*run.COMMANDS, *material.COMMANDS, *status.COMMANDS,
                         *background.COMMANDS, *config.COMMANDS, *doctor.COMMANDS,
                         *proxy.COMMANDS, *demo.COMMANDS, *ca.COMMANDS),
                        key=lambda command: GROUPS.index(command[0][0])))

OVERVIEW = """Runewarp — publish TLS services from behind NAT; the public edge never sees plaintext.

Usage:
{usage}
  runewarp (-h | --help)
  runewarp (-V | --version)

Run 'runewarp COMMAND --help' for the options of one command, e.g.
'runewarp server --help'.

Exit status: 0 success, 1 runtime failure, 2 usage or configuration error.
"""


def usage_lines(doc):
    """The usage patterns of a command doc (continuation lines included)."""
    section = doc.split("Usage:", 1)[1].split("\n\n", 1)[0]
    return [line for line in section.splitlines() if line.strip()]


def overview():
    return OVERVIEW.format(usage="\n".join(line for _, doc, _ in COMMANDS
                                           for line in usage_lines(doc)))


def find_command(argv):
    """The command with the most words that lead `argv`, or None."""
    best = None
    for words, doc, verb in COMMANDS:
        if tuple(argv[:len(words)]) == words and (best is None or len(words) > len(best[0])):
            best = (words, doc, verb)
    return best


def _options(doc):
    """{option name: takes a value} of a usage doc's Options section, and the flags its
    usage patterns name without listing them there (`(--stage | --commit | --abort)`)."""
    known = {"-h": False, "--help": False}
    usage = doc.split("Options:", 1)[0]
    known.update(dict.fromkeys(re.findall(r"(?<![\w-])(--[a-z][a-z-]*)(?![\w=-])", usage), False))
    for line in doc.split("Options:", 1)[-1].splitlines():
        if not line.lstrip().startswith("-"):
            continue
        for form in re.split(r"\s{2,}", line.strip())[0].split(", "):
            name, _, value = form.replace("=", " ").partition(" ")
            known[name] = bool(value)
    return known


def usage_error(words, doc, argv):
    """One line saying what is wrong with `argv` for the command `words`."""
    name = "runewarp " + " ".join(words)
    known = _options(doc)
    rest = argv[len(words):]
    for i, token in enumerate(rest):
        if token.startswith("-") and token != "-":
            option = token.split("=", 1)[0] if token.startswith("--") else token[:2]
            if option not in known:
                return f"unknown option {option} for '{name}'"
            if known[option] and "=" not in token and len(token) == len(option) and \
                    i + 1 == len(rest):
                return f"option {option} of '{name}' needs a value"
    return f"invalid arguments for '{name}': {' '.join(rest) or 'a command word is missing'}"


def main(argv=None):
    try:
        return _main(argv)
    except BrokenPipeError:
        # Output to a closed pipe (`| head`) ends quietly, with the status a shell shows
        # for a process SIGPIPE ended; the dup keeps the exit-time flush from failing.
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())
        return 141


def _main(argv):
    argv = list(sys.argv[1:] if argv is None else argv)
    if "-V" in argv or "--version" in argv:
        print(f"runewarp {__version__}")
        return 0
    if argv[:1] in (["-h"], ["--help"]):
        print(overview(), end="")
        return 0
    command = find_command(argv)
    if command is None:
        what = f"unknown command '{argv[0]}'" if argv else "no command given"
        return _usage_fail(what, "runewarp --help")
    words, doc, verb = command
    try:
        args = docopt(doc, argv)
    except DocoptExit:
        return _usage_fail(usage_error(words, doc, argv), f"runewarp {' '.join(words)} --help")
    return _run(verb, args)


def _usage_fail(message, help_command):
    fail(message, 2)
    print(f"see '{help_command}'", file=sys.stderr)
    return 2


def _run(verb, args):
    try:
        return verb(args)
    except ConfigError as exc:
        return fail(str(exc), 2)
    except MaterialError as exc:
        return fail(str(exc), 1)
    except (BindError, ActivationError) as exc:  # a runtime failure (exit 1), told by file
        source = Path(args["--config"]).expanduser() if args.get("--config") else \
            configuration.default_config_path()
        return fail(f"{source}: {exc}", 1)
    except OSError as exc:
        if isinstance(exc, BrokenPipeError):
            raise
        return fail(f"{exc.strerror or exc}: {exc.filename or ''}".rstrip(": "), 1)
    except KeyboardInterrupt:
        return 130
