"""A data set by name (`datasets.load_dataset`) -> rows named `NAME[SPLIT]: row N`, as files give them.

The Hugging Face cache serves it when present; with HF_HUB_OFFLINE=1 and no cached copy the error
says so in one line rather than the library's traceback.
"""

from __future__ import annotations

from align.core.errors import DataError
from align.core.readers import Row
from align.core.record_fields import clip


def hub_rows(name: str, split: str = "train", data_dir: str | None = None) -> list[Row]:
    """Every row of one split of the data set `name` (a hub id, or anything load_dataset resolves)."""
    import datasets
    from huggingface_hub import constants

    offline = bool(datasets.config.HF_HUB_OFFLINE or constants.HF_HUB_OFFLINE)
    try:
        data = datasets.load_dataset(name, split=split, data_dir=data_dir)
    except Exception as e:  # datasets raises many types: ConnectionError, DatasetNotFoundError, ValueError (split)
        if offline and (isinstance(e, ConnectionError) or "offline" in str(e).lower()):
            raise DataError([f"{name}: not in the local Hugging Face cache, and HF_HUB_OFFLINE=1 forbids downloading "
                             "it (unset HF_HUB_OFFLINE to download it, or convert a downloaded file)"]) from None
        raise DataError([f"{name}: cannot load it with datasets.load_dataset ({type(e).__name__}: "
                         f"{clip(str(e).splitlines()[0] if str(e) else '', 200)})"]) from None
    return [Row(f"{name}[{split}]: row {i + 1}", record) for i, record in enumerate(data)]
