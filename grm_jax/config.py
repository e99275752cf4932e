"""Run configs: typed dataclasses loaded from YAML with dotted command-line overrides
(`optim.lr=1e-6`), through OmegaConf structured configs."""

from __future__ import annotations

from pathlib import Path
from typing import Sequence, TypeVar

T = TypeVar("T")


def load_config(cls: type[T], path: str | Path | None = None, overrides: Sequence[str] = ()) -> T:
    """cls's defaults, then the YAML file, then `key=value` overrides; validated by cls itself."""
    from omegaconf import OmegaConf
    from omegaconf.errors import OmegaConfBaseException

    try:
        cfg = OmegaConf.structured(cls)
        if path is not None:
            if not Path(path).is_file():
                raise FileNotFoundError(f"config file {path} not found")
            cfg = OmegaConf.merge(cfg, OmegaConf.load(path))
        for item in overrides:
            if "=" not in item:
                raise ValueError(f"override {item!r} is not key=value")
        cfg = OmegaConf.merge(cfg, OmegaConf.from_dotlist(list(overrides)))
        return OmegaConf.to_object(cfg)
    except OmegaConfBaseException as e:
        where = f" in {path}" if path else ""
        raise ValueError(f"config{where}: {str(e).splitlines()[0]}") from None
