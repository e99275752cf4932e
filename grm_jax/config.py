"""Run configs: typed dataclasses loaded from YAML with dotted command-line overrides
(`optim.lr=1e-6`), through OmegaConf structured configs."""

from __future__ import annotations

from pathlib import Path
from typing import Sequence, TypeVar

T = TypeVar("T")


def load_config(cls: type[T], path: str | Path | None = None, overrides: Sequence[str] = ()) -> T:
    """cls's defaults, then the YAML file, then `key=value` overrides; validated by cls itself."""
    import yaml
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
    except (OmegaConfBaseException, yaml.YAMLError) as e:
        where = f" in {path}" if path else ""
        raise ValueError(f"config{where}: {str(e).splitlines()[0]}") from None


def require_positive(obj, *names: str, allow_zero: bool = False) -> None:
    """ValueError naming the first field of `obj` (a run config) that is not > 0 (or >= 0)."""
    import math

    for name in names:
        value = getattr(obj, name)
        if value is None:
            continue
        ok = value >= 0 if allow_zero else value > 0
        if not ok or (isinstance(value, float) and not math.isfinite(value)):
            bound = ">= 0" if allow_zero else "> 0"
            raise ValueError(f"{name} must be a finite number {bound}, got {value}")
