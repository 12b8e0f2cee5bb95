"""The `align` group itself: how errors reach the user (one line, exit 2) and how quiet the libraries are."""

from __future__ import annotations

import errno
import logging
import os

import click

from align.core.errors import AlignError, Terminated


class AlignGroup(click.Group):
    def invoke(self, ctx: click.Context):
        try:
            return super().invoke(ctx)
        except AlignError as e:
            click.echo(f"error: {e}", err=True)
            ctx.exit(2)
        except Terminated as e:  # status.json already says failed; exit as the signal would have
            click.echo(f"error: {e}", err=True)
            ctx.exit(128 + e.signum)
        except OSError as e:
            if e.errno not in USER_OS_ERRORS:
                raise
            where = f"{e.filename}: " if e.filename else ""
            click.echo(f"error: {where}{e.strerror or e}{USER_OS_ERRORS[e.errno]}", err=True)
            ctx.exit(2)


# errors of the machine the user can act on, not bugs: one line each, no traceback
USER_OS_ERRORS = {
    errno.ENOSPC: " (free space there, then --resume continues from the newest checkpoint)",
    errno.EDQUOT: " (the disk quota is full; free space, then --resume continues from the newest checkpoint)",
    errno.EROFS: " (a read-only file system: write elsewhere with --out)",
    errno.EACCES: " (no permission: write elsewhere with --out)",
    errno.EPERM: " (not permitted: write elsewhere with --out)",
}


# new by design), bitsandbytes' optional CPU kernels that an offline machine cannot fetch
LIBRARY_LOGGERS = ("transformers", "kernels", "bitsandbytes", "accelerate", "peft", "trl", "datasets", "httpx")


def _quiet_libraries(verbose: int = 0) -> None:
    """align's own warnings always show; the libraries' warnings (their deprecations, load reports, optional
    kernels) only with -v. Errors always show."""
    import warnings

    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    logging.basicConfig(level=logging.DEBUG if verbose > 1 else logging.WARNING,
                        format="%(levelname)s %(name)s: %(message)s")
    if verbose:
        return
    for name in LIBRARY_LOGGERS:
        logging.getLogger(name).setLevel(logging.ERROR)
    os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")
    for category in (FutureWarning, DeprecationWarning):
        warnings.filterwarnings("ignore", category=category, module=r"(transformers|peft|trl|accelerate|torch)\b")
    warnings.filterwarnings("ignore", message=r".*pin_memory.*no accelerator is found")
    # an adapter names its base portably (the hub id) and loads onto align's local copy of it: by design
    warnings.filterwarnings("ignore", message=r".*base_model_name_or_path.* was renamed from")


@click.group(cls=AlignGroup, context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(package_name="align", prog_name="align", message="%(prog)s %(version)s")
@click.option("-v", "--verbose", count=True, help="Show the libraries' warnings too (-vv: debug logs).")
def cli(verbose):
    """align: QLoRA SFT, reward models from rankings, PPO, and evaluation."""
    _quiet_libraries(verbose)
