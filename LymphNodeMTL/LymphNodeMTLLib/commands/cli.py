"""`lymphnode-mtl`: the headless engine from the command line.

One module per command in this package (`COMMANDS` below), each with `add_arguments(parser)` and
`run(args)`; this file only builds the parser and dispatches. Every user error ends as one line on
stderr and exit code 2 (bad arguments too); outputs are written only when the whole run succeeded.
"""

from __future__ import annotations

import argparse
import importlib
import math
import sys

from ..core.errors import InputError
from ..core.version import __version__

PROG = "lymphnode-mtl"

DESCRIPTION = "LymphNodeMTL: lymph-node masks and metastasis probabilities from a CT and one seed per node."
# under the command list (which argparse prints from COMMANDS)
EPILOG = """\
The bundled model is trained on synthetic phantoms: a demonstration, not a clinical model.
Run `lymphnode-mtl COMMAND --help` for each command's options.
"""

# command -> (module in this package, one-line help). Each module has add_arguments(parser) and
# run(args), and may have EPILOG (text under its --help); heavy imports wait for run().
COMMANDS: dict[str, tuple[str, str]] = {
    "predict": ("predict_command", "segment and classify the nodes of one CT, or of a cohort"),
    "follow-up": ("follow_up_command",
                  "carry a baseline's nodes into a follow-up CT (or a cohort of pairs): change, response"),
    "demo": ("demo", "run predict on a synthetic phantom CT"),
    "phantom": ("phantom", "write a phantom training set in manifest format"),
    "train": ("train", "train a model folder from a training manifest"),
    "evaluate": ("evaluate", "score a model on a manifest with per-node truth"),
    "ablate": ("ablate", "train and compare the published components (ablation table)"),
    "serve": ("serve", "run the engine as a resident inference server (HTTP API)"),
}


class OneLineParser(argparse.ArgumentParser):
    """argparse, but a bad argument is one line (`lymphnode-mtl: error: ...`) and exit code 2."""

    def error(self, message):
        command = self.prog[len(PROG):].strip()
        where = f"{command}: " if command else ""
        self.exit(2, f"{PROG}: error: {where}{message}; see `{self.prog} --help`\n")


# --- argument types ------------------------------------------------------------------------------
def _whole_number(text: str, minimum: int) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a whole number") from None
    if value < minimum:
        wanted = "at least 1" if minimum == 1 else f"{minimum} or more"
        raise argparse.ArgumentTypeError(f"must be {wanted}, got {value}")
    return value


def positive_int(text: str) -> int:
    return _whole_number(text, 1)


def non_negative_int(text: str) -> int:
    return _whole_number(text, 0)


def positive_float(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a number") from None
    if not math.isfinite(value) or value <= 0:
        raise argparse.ArgumentTypeError(f"must be a number above 0, got {text}")
    return value


def device_name(text: str) -> str:
    """auto, cpu, cuda, cuda:N or mps, refused here when this machine has no such device."""
    name = text.strip().lower()
    if name in ("auto", "cpu"):
        return name
    kind, _, index = name.partition(":")
    if kind not in ("cuda", "mps") or (index and not index.isdigit()) or (kind == "mps" and index):
        raise argparse.ArgumentTypeError(f"unknown device {text!r}; use auto, cpu or cuda (cuda:N, mps)")
    import torch  # only when a GPU is asked for

    if kind == "cuda":
        count = torch.cuda.device_count() if torch.cuda.is_available() else 0
        if count == 0:
            raise argparse.ArgumentTypeError(f"{text}: no CUDA GPU is available here; use cpu or auto")
        if index and int(index) >= count:
            raise argparse.ArgumentTypeError(f"{text}: this machine has {count} CUDA GPU(s), "
                                             f"cuda:0 to cuda:{count - 1}")
    elif not (getattr(torch.backends, "mps", None) and torch.backends.mps.is_available()):
        raise argparse.ArgumentTypeError(f"{text}: Apple's MPS is not available here; use cpu or auto")
    return name


def add_engine_arguments(p: argparse.ArgumentParser) -> None:
    """Model, device, batch size and --overwrite: shared by predict and demo."""
    p.add_argument("--model", metavar="DIR", help="model folder (default: the bundled demo model)")
    p.add_argument("--device", type=device_name, default="auto", metavar="auto|cpu|cuda",
                   help="where the network runs; auto picks a GPU when there is one (default auto)")
    p.add_argument("--batch-size", type=positive_int, default=None, metavar="N",
                   help="nodes per network pass, at least 1 (default: 64 on GPU, 8 on CPU)")
    p.add_argument("--no-uncertainty", action="store_true",
                   help="skip the mask agreement (each mask's stability under a threshold change, "
                        "read from the pass the node already had: milliseconds) and its low_agreement flag")
    p.add_argument("--overwrite", action="store_true",
                   help="replace existing results in DIR (they may hold edited masks; off by default); "
                        "other files in DIR are never touched")


def _command_module(name: str):
    return importlib.import_module(f".{COMMANDS[name][0]}", __package__)


def build_parser() -> argparse.ArgumentParser:
    parser = OneLineParser(prog=PROG, description=DESCRIPTION, epilog=EPILOG,
                           formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--version", action="version", version=f"%(prog)s {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", title="commands")
    for name, (_module, help_text) in COMMANDS.items():
        module = _command_module(name)
        p = sub.add_parser(name, help=help_text, description=help_text,
                           epilog=getattr(module, "EPILOG", None),
                           formatter_class=argparse.RawDescriptionHelpFormatter)
        module.add_arguments(p)
    return parser


def main(argv=None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if not args.command:
        parser.print_help()
        return 2
    from ..outputs.output_folder import TerminatedBySignal, os_error_line

    try:
        result = _command_module(args.command).run(args)
    except InputError as e:
        print(f"{PROG}: error: {e}", file=sys.stderr)
        return 2
    except OSError as e:  # a folder or disk problem the command did not foresee: still one line
        print(f"{PROG}: error: {os_error_line(e, getattr(args, 'out', ''), 'use')}", file=sys.stderr)
        return 2
    except TerminatedBySignal as e:
        print(f"{PROG}: stopped by {e}; no partial results were left", file=sys.stderr)
        return 128 + e.signum
    except KeyboardInterrupt:
        print(f"{PROG}: interrupted; no partial results were left", file=sys.stderr)
        return 130
    # a command may end with its own exit code (predict --manifest: 1 when a case failed)
    return result if isinstance(result, int) and not isinstance(result, bool) else 0


if __name__ == "__main__":
    sys.exit(main())
