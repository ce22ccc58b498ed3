"""``scanstream plugins`` (what was found, and which backend each model will use) and ``plugins check NAME``."""

from __future__ import annotations

import argparse
import json
import sys

from engine.commands.common import add_command, config_from_args


def register(sub: "argparse._SubParsersAction[argparse.ArgumentParser]") -> None:
    """Add ``plugins`` and its ``check`` subcommand."""
    plugins = add_command(sub, "plugins", cmd_plugins,
                          "list plugins, models (with the backend each will use, and why), outputs and "
                          "notification kinds")
    plugins.add_argument("--no-measure", action="store_true",
                         help="do not time CPU backends that have not been timed on this host yet")
    plugins_commands = plugins.add_subparsers(dest="plugins_command", metavar="{check}")
    check_help = "check a plugin's models end to end: hooks, spec, weights, a phantom run, every output re-read"
    check = plugins_commands.add_parser("check", help=check_help, description=check_help)
    check.set_defaults(func=cmd_plugins_check)
    check.add_argument("name", help="a plugin as `scanstream plugins` lists it, or a model name")
    check.add_argument("--json", action="store_true", help="print the checks as JSON")
    check.add_argument("--export", action="store_true",
                       help="also export each model to ONNX and compare ONNX Runtime with torch")
    check.add_argument("--config", default=argparse.SUPPRESS, help="TOML config file (as for `plugins`)")


def cmd_plugins(args: argparse.Namespace) -> int:
    """List plugins, models and output kinds."""
    from engine.plugins import load_plugins
    from engine.runtime.prepare import describe_choice

    config = config_from_args(args)
    loaded = load_plugins(config)
    print("plugins:")
    for name in loaded.plugin_names:
        print(f"  {name}")
    print("models:")
    for spec in loaded.models.all():
        print(f"  {spec.name} {spec.version}  outputs={','.join(spec.outputs)}  {spec.description}")
        print(f"    backend: {describe_choice(spec, config.worker, measure=not args.no_measure)}")
    print("outputs:")
    for kind in loaded.outputs.kinds():
        print(f"  {kind}")
    print("notification kinds:")
    for kind in loaded.notifiers.kinds():
        print(f"  {kind}")
    return 0


def cmd_plugins_check(args: argparse.Namespace) -> int:
    """Check a plugin's models end to end on a phantom series; 0 when every check passes, 1 otherwise."""
    from rich.console import Console

    from engine.plugin_check import check_plugin, render

    report = check_plugin(args.name, config_from_args(args), export=args.export)
    if args.json:
        print(json.dumps(report.to_json(), indent=2))
    else:
        Console(width=None if sys.stdout.isatty() else 120).print(render(report))  # pipes get 120, not 80
    return 0 if report.ok else 1
