"""The ``tlsync`` command.

Commands that train or predict live in ``tlsync.trainer`` (``LAZY_COMMANDS``) and are imported only when
run, so that ``tlsync --help``, ``sources`` and ``pull`` never import torch. Every error
reaches the user as one redacted line on stderr and a non-zero exit; ``--debug`` shows
the traceback.
"""

from __future__ import annotations

import importlib
import importlib.util
import os
import sys
from typing import Any

import click

from . import __version__
from .errors import Terminated, TlsyncError
from .lazy_commands import LAZY_COMMANDS, SHORT_HELP_LIMIT, lazy_short_help


class LazyGroup(click.Group):
    def list_commands(self, ctx: click.Context) -> list[str]:
        return sorted([*super().list_commands(ctx), *LAZY_COMMANDS])

    def get_command(self, ctx: click.Context, name: str) -> click.Command | None:
        if name in LAZY_COMMANDS:
            module, _, attr = LAZY_COMMANDS[name].partition(":")
            command: click.Command = getattr(importlib.import_module(module), attr)
            return command
        return super().get_command(ctx, name)

    def format_commands(self, ctx: click.Context, formatter: click.HelpFormatter) -> None:
        rows = [(n, lazy_short_help(LAZY_COMMANDS[n]) if n in LAZY_COMMANDS
                 else self.commands[n].get_short_help_str(SHORT_HELP_LIMIT)) for n in self.list_commands(ctx)]
        with formatter.section("Commands"):
            formatter.write_dl(rows)


@click.group(cls=LazyGroup)
@click.version_option(__version__, prog_name="tlsync")
@click.option("--debug", is_flag=True, help="Show tracebacks instead of one-line errors.")
def cli(debug: bool) -> None:
    """Pull labelled images from Nucleus, Roboflow or COCO folders and fine-tune detectors on them."""
    if debug:
        os.environ["TLSYNC_DEBUG"] = "1"


@cli.command()
def sources() -> None:
    """List the data sources (built-in and from plugins) with their options."""
    from . import plugins
    from .console import echo

    for name, source in sorted(plugins.get_sources().items()):
        echo(f"{name}: {source.description} ({source_origin(plugins.source_plugin(name))})")
        for opt in source.options:
            echo(f"    {', '.join(opt.opts):<24} {opt.help or ''}")
    for plugin, error in sorted(plugins.broken.items()):
        echo(f"BROKEN {plugin}: {error}")


def source_origin(info: Any) -> str:
    """``plugin csvboxes 0.1.0``, or ``built-in tlsync.connectors.coco, tlsync 0.1.0``: where a
    source's code comes from and which release, for a bug report or a version check."""
    if info is None:
        return "plugin ?"
    if info.builtin:
        return f"built-in {info.name}, tlsync {__version__}"
    return f"plugin {info.name} {info.version or '?'}"


@cli.command(name="plugins")
def plugins_command() -> None:
    """List installed plugins, their versions, the hooks each implements, and broken ones."""
    from . import plugins
    from .console import echo

    for info in plugins.plugin_infos():
        origin = "built-in" if info.builtin else (info.version or "?")
        status = f"BROKEN: {info.error}" if info.error else ", ".join(info.hooks)
        echo(f"{info.name} ({origin}): {status}")


class PluginOptionsCommand(click.Command):
    """A command that grows the options of the plugin object it is given by name.

    ``pull --source X`` gains source X's options and ``push --target Y`` target Y's, so
    ``--help`` lists them. ``kind`` names the flag (``--source``), the lookup
    (``plugins.get_source``) and where the object goes (``ctx.meta["tlsync.source"]``).
    """

    kind = "source"
    options_attr = "options"  # which of the plugin object's option lists this command grows

    def parse_args(self, ctx: click.Context, args: list[str]) -> list[str]:
        name = _peek_option(args, f"--{self.kind}")
        if name:
            from . import plugins

            chosen = getattr(plugins, f"get_{self.kind}")(name)
            ctx.meta[f"tlsync.{self.kind}"] = chosen
            # The plugin's options join only this parse (which also renders --help): the
            # command object is shared, and must not keep options from an earlier call.
            own = self.params
            self.params = [*own, *getattr(chosen, self.options_attr)]
            try:
                return super().parse_args(ctx, args)
            finally:
                self.params = own
        return super().parse_args(ctx, args)


class SourceCommand(PluginOptionsCommand):
    """``pull`` grows the chosen source's options, so ``--source X --help`` lists them."""

    kind = "source"


class TargetCommand(PluginOptionsCommand):
    """``push`` (``tlsync.trainer.commands.push``) grows the chosen target's options (``--target X --help``)."""

    kind = "target"


def _peek_option(args: list[str], flag: str) -> str | None:
    for i, arg in enumerate(args):
        if arg == flag and i + 1 < len(args):
            return args[i + 1]
        if arg.startswith(flag + "="):
            return arg.split("=", 1)[1]
    return None


@cli.command(cls=SourceCommand, context_settings={"ignore_unknown_options": False})
@click.option("--source", "source_name", required=True, help="Source name (see `tlsync sources`).")
@click.option("--dataset", required=True, help="Local dataset name; each changed pull adds a version.")
@click.option("--split-ratios", default="0.8,0.1,0.1", show_default=True,
              help="train,val,test ratios for items the source gives no split.")
@click.option("--on-error", type=click.Choice(["fail", "skip"]), default="fail", show_default=True,
              help="On a bad item or box: stop, or skip it and count it in the summary.")
@click.option("--concurrency", type=click.IntRange(1, 256), default=None, help="Parallel image fetches.")
@click.option("--reread", is_flag=True,
              help="Read the source even if its files are unchanged since the last pull.")
@click.option("--max-image-bytes", default="256MB", show_default=True,
              help="Refuse (or, with --on-error skip, skip) an image larger than this.")
@click.option("--download-timeout", type=click.FloatRange(0, min_open=True), default=300.0, show_default=True,
              help="Seconds of wall time one image download may take, retries included.")
@click.pass_context
def pull(ctx: click.Context, source_name: str, dataset: str, split_ratios: str, on_error: str,
         concurrency: int | None, reread: bool, max_image_bytes: str, download_timeout: float,
         **source_options: Any) -> None:
    """Pull items and boxes from a source into a local, versioned dataset."""
    from .archives import parse_size
    from .console import progress
    from .pull import Limits
    from .pull import pull as run_pull
    from .splits import parse_ratios
    from .store import Store

    source = ctx.meta["tlsync.source"]
    limits = Limits(parse_size(max_image_bytes, "--max-image-bytes"), download_timeout)
    with progress(f"pull {source_name} -> {dataset}", unit="items") as update:
        result = run_pull(Store(), source, source_options, dataset, on_error, parse_ratios(split_ratios),
                          concurrency, progress=update, reread=reread, limits=limits)
    print_pull_summary(result)


def print_pull_summary(result: Any) -> None:
    from .console import echo

    for note in result.notes:
        echo(note)
    images = "" if result.quick else f" ({result.fetched} images fetched, {result.cached} from cache)"
    click.echo(f"{result.items} items, {result.boxes} boxes, {len(result.categories)} classes{images} "
               f"in {result.seconds:.1f}s")
    if result.skipped:
        click.echo(f"skipped {sum(result.skipped.values())}:")
        for reason, n in sorted(result.skipped.items(), key=lambda kv: -kv[1])[:10]:
            echo(f"  {n} x {reason}")
    if result.not_used:
        echo("not used: " + ", ".join(f"{n} {kind}" for kind, n in sorted(result.not_used.items())))
    click.echo(f"unchanged, still {result.ref}" if result.unchanged else f"new version {result.ref}")


@cli.command()
@click.option("--dataset", default="quickstart", show_default=True, help="Dataset name for the synthetic data.")
@click.option("--seconds", default=60, show_default=True, help="Training time budget.")
def quickstart(dataset: str, seconds: int) -> None:
    """Pull the built-in synthetic dataset, then train and evaluate a small detector on it."""
    from . import plugins
    from .pull import pull as run_pull
    from .store import Store

    result = run_pull(Store(), plugins.get_source("synthetic"), {}, dataset)
    print_pull_summary(result)
    try:
        quick = importlib.import_module("tlsync.trainer.training.quick")
    except ImportError:
        click.echo("next: tlsync train --dataset " + dataset)
        return
    quick.run(result.ref, seconds)


def _stop_on_sigterm() -> None:
    """SIGTERM raises ``Terminated`` in this process's main thread (see ``errors.Terminated``).

    A process forked from this one (a data loader's worker) keeps the default: it is told
    apart by its pid and ended as SIGTERM always ended it.
    """
    import signal

    owner = os.getpid()

    def stop(signum: int, frame: Any) -> None:
        if os.getpid() != owner:
            signal.signal(signal.SIGTERM, signal.SIG_DFL)
            os.kill(os.getpid(), signal.SIGTERM)
            return
        raise Terminated

    signal.signal(signal.SIGTERM, stop)


def main(argv: list[str] | None = None) -> None:
    """Entry point: one-line errors, exit codes 1 (error), 2 (usage), 130 (Ctrl-C), 143 (SIGTERM).

    Everything printed passes ``console.printable``: data-borne escape sequences never reach the terminal.
    ``argv=None`` is the ``tlsync`` program itself (the script, ``python -m tlsync``): its exit is near
    once the command returns, and freezing the GC's objects spares the interpreter's final collections
    (about 50 ms of a quick pull); in-process callers (tests) pass ``argv`` and keep their GC as it was.
    """
    from .console import printable_output

    if argv is None:
        _stop_on_sigterm()
    try:
        with printable_output():
            _main(argv)
    finally:
        if argv is None:
            import gc

            gc.freeze()


def _main(argv: list[str] | None) -> None:
    from .console import echo, escaped

    try:
        cli.main(args=argv, prog_name="tlsync", standalone_mode=False)
    except click.exceptions.Exit as e:
        sys.exit(e.exit_code)
    except click.ClickException as e:
        e.show(file=escaped(sys.stderr))  # its message may quote a value from data (a name, a file)
        sys.exit(e.exit_code)
    except click.exceptions.Abort as e:  # click's own wrapping of a KeyboardInterrupt met in a command
        if isinstance(e.__cause__, Terminated):
            click.echo("Terminated.", err=True)
            sys.exit(143)  # 128 + SIGTERM, as a shell reports a process the signal ended
        click.echo("Aborted.", err=True)
        sys.exit(130)
    except Terminated:
        click.echo("Terminated.", err=True)
        sys.exit(143)  # 128 + SIGTERM, as a shell reports a process the signal ended
    except KeyboardInterrupt:
        click.echo("Interrupted.", err=True)
        sys.exit(130)
    except Exception as e:
        if os.environ.get("TLSYNC_DEBUG"):
            raise
        if isinstance(e, TlsyncError):
            message = str(e)
        else:
            message = f"{type(e).__name__}: {e} (run with --debug for the traceback)"
        echo("Error: " + " ".join(message.split()), err=True)
        sys.exit(1)


if __name__ == "__main__":
    main()
