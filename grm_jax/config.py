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


def from_dict(cls: type[T], raw: dict) -> T:
    """cls built from a run's YAML dict, keeping only cls's fields (a plan reads configs written for
    the run itself); paths it does not need (model, data, out) may be unset. Validated by cls."""
    import dataclasses

    from omegaconf import OmegaConf
    from omegaconf.errors import OmegaConfBaseException

    fields = {f.name for f in dataclasses.fields(cls)}
    keep = {k: v for k, v in raw.items() if k in fields}
    for key in ("model", "data", "out"):
        if key in fields and keep.get(key) in (None, "???"):
            keep[key] = "unset"
    try:
        return OmegaConf.to_object(OmegaConf.merge(OmegaConf.structured(cls), keep))
    except OmegaConfBaseException as e:
        raise ValueError(f"config: {str(e).splitlines()[0]}") from None


# Every bounded field of every run config, in one table: config class -> field -> rule. A rule is
# ">= x" / "> x", an interval "in [a, b]" (round brackets: open ends), "one of MODULE.NAME" (the
# vocabulary where the code that uses it defines it) or "any" (a number with no bound: a seed).
# Every number-valued field is listed (tests/test_bad_input.py holds the table to the classes). Optional fields set to None pass. Checked by
# `validate` when a config is built (each class's __post_init__); rules that tie fields together
# (a batch splitting into microbatches, warmup within total steps) stay with the class.
BOUNDS: dict[str, dict[str, str]] = {
    "OptimConfig": {
        "lr": "> 0", "schedule": "one of grm_jax.train.optim.SCHEDULES", "warmup_steps": ">= 0",
        "total_steps": ">= 1", "min_lr_ratio": "in [0, 1]", "weight_decay": ">= 0", "b1": "in [0, 1)",
        "b2": "in [0, 1)", "eps": "> 0", "clip_norm": "> 0", "grad_accum": ">= 1"},
    "SFTConfig": {
        "steps": ">= 1", "batch_size": ">= 1", "max_length": ">= 2", "save_every": ">= 1", "keep": ">= 1",
        "chunk": ">= 1", "data_shards": ">= 1", "seed": "any"},
    "GRPOConfig": {
        "reward": "one of grm_jax.train.grpo.REWARD_KINDS", "reward_target": ">= 0",
        "grm_format": "one of grm_jax.eval.judge.FORMATS", "steps": ">= 1", "prompts_per_step": ">= 1",
        "group_size": ">= 2", "max_new_tokens": ">= 1", "max_prompt_length": ">= 1", "temperature": "> 0",
        "decode_layout": "one of grm_jax.sharding.DECODE_LAYOUTS", "data_shards": ">= 1", "inner_iters": ">= 1",
        "eps": "> 0", "eps_high": "> 0", "beta": ">= 0", "kl": "one of grm_jax.train.rl.KL_ESTIMATORS",
        "aggregation": "one of grm_jax.train.rl.AGGREGATIONS", "save_every": ">= 1", "keep": ">= 1",
        "chunk": ">= 1", "seed": "any"},
    "ScoreOptions": {
        "reward": "one of grm_jax.rewards.endogenous.REWARDS", "batch_size": ">= 1", "max_length": ">= 2",
        "alpha": "> 0", "chunk": ">= 1"},
    "JudgeOptions": {  # judge, and rft's sampling (its n is k)
        "k": ">= 1", "temperature": ">= 0", "max_new_tokens": ">= 1", "batch_size": ">= 1",
        "vote": "one of grm_jax.rewards.voting.VOTES", "format": "one of grm_jax.eval.judge.FORMATS",
        "k_meta": ">= 1", "scaling_draws": ">= 1", "seed": "any"},
    "DemoConfig": {
        "train_items": ">= 1", "eval_items": ">= 1", "val_items": ">= 0", "max_operand": ">= 1",
        "teacher_error": "in [0, 1]", "meta_init": "one of grm_jax.demo.config.META_INITS",
        "meta_batches": "one of grm_jax.demo.config.META_BATCHES",
        "misconceived": "in [0, 1]", "misconception_rate": "in [0, 1]",
        "qa_error": "in [0, 1]", "qa_repeats": ">= 1", "plus_one_repeats": ">= 0", "grm_shuffles": ">= 1",
        "judge_shuffles": ">= 0", "vocab_size": ">= 261", "hidden_size": ">= 1", "num_layers": ">= 1",
        "num_heads": ">= 1", "num_kv_heads": ">= 1", "mlp_size": ">= 1", "pretrain_steps": ">= 1",
        "batch_size": ">= 1", "pretrain_lr": "> 0", "rft_items": ">= 1", "n_rft": ">= 1",
        "rft_temperature": "> 0", "rft_steps": ">= 1", "rft_lr": "> 0", "grpo_steps": ">= 1",
        "grpo_prompts": ">= 1", "group_size": ">= 2", "grpo_lr": "> 0", "grpo_beta": ">= 0",
        "meta_items": ">= 1", "meta_samples": ">= 1", "meta_rft_items": ">= 0", "meta_steps": ">= 1", "meta_lr": "> 0",
        "scalar_steps": ">= 1", "scalar_lr": "> 0", "k": ">= 1", "temperature": "> 0", "max_new_tokens": ">= 1",
        "judge_batch": ">= 1", "endo_steps": ">= 1", "endo_prompts": ">= 1", "endo_group_size": ">= 2",
        "endo_lr": "> 0", "endo_beta": ">= 0", "endo_samples": ">= 1", "seed": "any"},
}


def _broken(value, rule: str) -> str | None:
    """What `value` breaks of `rule` ("must be ..."), or None."""
    import importlib
    import math

    if rule == "any":
        return None
    if rule.startswith("one of "):
        module, _, name = rule[len("one of "):].rpartition(".")
        allowed = tuple(getattr(importlib.import_module(module), name))
        return None if value in allowed else f"must be one of {', '.join(map(str, allowed))}"
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
        return f"must be a finite number {rule.removeprefix('in ')}"
    if rule.startswith("in "):
        lo_open, lo, hi, hi_open = rule[3] == "(", *map(float, rule[4:-1].split(",")), rule[-1] == ")"
        ok = (value > lo if lo_open else value >= lo) and (value < hi if hi_open else value <= hi)
        return None if ok else f"must be in {rule[3:]}"
    op, bound = rule.split()
    ok = value > float(bound) if op == ">" else value >= float(bound)
    return None if ok else f"must be {rule}"


def validate(obj) -> None:
    """ValueError naming the first field of `obj` (a run config) that breaks its rule in BOUNDS."""
    for name, rule in BOUNDS[type(obj).__name__].items():
        value = getattr(obj, name)
        if value is not None and (why := _broken(value, rule)):
            raise ValueError(f"{name} {why}, got {value!r}")
