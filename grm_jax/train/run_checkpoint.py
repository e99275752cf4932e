"""Run checkpoints with Orbax's CheckpointManager: the train state (params, optimizer state, step,
RNG), the data iterator state and the run config, in one checkpoint per saved step.

Saves are asynchronous (the train loop continues while the arrays are written) and only the last
`keep` steps are kept. Orbax writes a step under a temporary name and finalizes it when complete,
so a crash mid-save leaves the previous steps intact; a finalized step that cannot be read (a
truncated file) is reported and the next older step is restored instead.
"""

from __future__ import annotations

import json
from pathlib import Path

import jax
import orbax.checkpoint as ocp


class RunCheckpointer:
    """Saves and restores (state, data state, config) under `directory`/<step>/."""

    def __init__(self, directory: str | Path, *, keep: int = 3, async_save: bool = True):
        self.directory = Path(directory).absolute()
        options = ocp.CheckpointManagerOptions(max_to_keep=keep, enable_async_checkpointing=async_save,
                                               create=True)
        self.manager = ocp.CheckpointManager(self.directory, options=options,
                                             item_names=("state", "data", "config"))

    def steps(self) -> list[int]:
        return sorted(self.manager.all_steps())

    def save(self, step: int, state, data_state: dict, config: dict, *, force: bool = False) -> bool:
        args = ocp.args.Composite(state=ocp.args.StandardSave(state),
                                  data=ocp.args.JsonSave(data_state),
                                  config=ocp.args.JsonSave(config))
        return self.manager.save(step, args=args, force=force)

    def restore(self, abstract_state, *, log=print):
        """(step, state, data state, config) of the newest readable step, or None if none exists.

        `abstract_state` is a pytree of jax.ShapeDtypeStruct (with shardings) like the state.
        """
        for step in reversed(self.steps()):
            try:
                got = self.manager.restore(step, args=ocp.args.Composite(
                    state=ocp.args.StandardRestore(abstract_state), data=ocp.args.JsonRestore(),
                    config=ocp.args.JsonRestore()))
            except Exception as e:  # noqa: BLE001 - any unreadable step: fall back to an older one
                older = [s for s in self.steps() if s < step]
                log(f"checkpoint {self.directory / str(step)} cannot be restored ({type(e).__name__}: "
                    f"{str(e)[:200]}); " + (f"falling back to step {older[-1]}" if older else "no older step"))
                continue
            return step, got.state, dict(got.data), dict(got.config)
        return None

    def saved_config(self, step: int) -> dict:
        """The run config saved with `step` (nothing else is read)."""
        got = self.manager.restore(step, args=ocp.args.Composite(config=ocp.args.JsonRestore()))
        return dict(got.config)

    def wait(self):
        self.manager.wait_until_finished()

    def close(self):
        self.manager.wait_until_finished()
        self.manager.close()


# Run-config fields a resumed run may change: how long it runs, how it saves, how it is laid out
# and computed. Everything else (model, data, shapes, optimizer, reward, seed...) is the run's
# identity: resuming under another would continue one run with the settings of another.
RESUMABLE_CHANGES = ("steps", "save_every", "keep", "mesh", "data_shards", "unroll_layers", "remat",
                     "decode_layout", "chunk", "optim.total_steps")


def identity_changes(saved: dict, now: dict) -> list[str]:
    """'field: saved -> now' for each identity field (dotted) that differs between two run configs."""
    def flat(d, prefix=""):
        out = {}
        for k, v in d.items():
            if isinstance(v, dict):
                out.update(flat(v, f"{prefix}{k}."))
            else:
                out[f"{prefix}{k}"] = v
        return out
    a, b = flat(saved), flat(now)
    return [f"{k}: {a.get(k)!r} -> {b.get(k)!r}" for k in sorted(set(a) | set(b))
            if k not in RESUMABLE_CHANGES and a.get(k) != b.get(k)]


def abstract_like(tree):
    """ShapeDtypeStructs (with shardings) of a pytree of arrays: the restore target."""
    return jax.tree.map(lambda x: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=getattr(x, "sharding", None)), tree)


def config_json(obj) -> dict:
    """A run config as plain JSON data (dataclasses and paths included)."""
    import dataclasses

    def default(o):
        if dataclasses.is_dataclass(o):
            return dataclasses.asdict(o)
        if isinstance(o, Path):
            return str(o)
        raise TypeError(f"cannot store {type(o).__name__} in the run config")
    return json.loads(json.dumps(obj, default=default))
