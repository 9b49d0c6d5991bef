"""What the ``vitdense`` command keeps out of its output: warnings and log lines of other libraries that say
nothing to its user. Set while a command runs, undone after: importing the kit changes nothing global."""

import logging
import warnings
from collections.abc import Iterator
from contextlib import contextmanager

__all__ = ["command_output_filters"]

# Lightning logs its tips (and the advert below) through this logger.
_LIGHTNING_TIPS = "lightning.pytorch.utilities.rank_zero"


class _WithoutLoggingAdvert(logging.Filter):
    """Drops the tip to install Lightning's cloud logger that the trainer logs on every run."""

    def filter(self, record: logging.LogRecord) -> bool:
        return not str(record.msg).startswith("💡 Tip: For seamless cloud logging")


@contextmanager
def command_output_filters() -> Iterator[None]:
    """Inside: the warnings below are ignored and Lightning's cloud-logger advert is dropped. Filters the
    command adds while it runs (e.g. for the loggers it adds) are removed on the way out as well."""
    advert = _WithoutLoggingAdvert()
    tips = logging.getLogger(_LIGHTNING_TIPS)
    with warnings.catch_warnings():
        # Lightning 2.6 builds torch's LeafSpec, deprecated since torch 2.12, to flatten each predicted batch:
        # the warning is Lightning's to fix and says nothing to a user of the command.
        warnings.filterwarnings(
            "ignore", message=r"`isinstance\(treespec, LeafSpec\)` is deprecated", category=FutureWarning
        )
        # The evaluation metrics are computed over every process (gathered detections, a summed confusion
        # matrix) before they are logged, the same on each: Lightning's advice to average them over the
        # processes again (a warning per metric under DDP) does not apply.
        warnings.filterwarnings(
            "ignore",
            message=r"It is recommended to use `self\.log\('(val|test)/(bbox_|segm_|mIoU'|aAcc'|mAcc')",
        )
        tips.addFilter(advert)
        try:
            yield
        finally:
            tips.removeFilter(advert)
