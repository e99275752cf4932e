"""Hostile files: a prompt template cannot run code, a model directory cannot make grm-jax read or
copy files outside it."""

import json
import os
import shutil

import jax
import numpy as np
import pytest

from grm_jax.cli import main
from grm_jax.hf import UnsafePathError, load_hf, tokenizer_files
from grm_jax.hf.safetensors_io import open_checkpoint, write_file
from grm_jax.rewards.grm import load_template, render

ATTACKS = [
    "{{ cycler.__init__.__globals__.os.system('touch MARKER') }}",
    "{{ ''.__class__.__mro__[1].__subclasses__() }}{{ joiner.__init__.__globals__.os.system('touch MARKER') }}",
    "{% set x = namespace.__init__.__globals__ %}{{ x.os.popen('touch MARKER').read() }}",
    "{{ lipsum.__globals__['os'].system('touch MARKER') }}",
    "{{ responses.append('touch MARKER') }}",  # mutating the inputs
]


@pytest.mark.parametrize("attack", ATTACKS)
def test_a_template_cannot_run_code(tmp_path, attack):
    marker = tmp_path / "pwned"
    (tmp_path / "evil.jinja").write_text(attack.replace('MARKER', str(marker)))
    template = load_template(tmp_path / "evil.jinja")
    with pytest.raises(ValueError, match="evil.jinja"):
        render(template, "q", ["a", "b"])
    assert not marker.exists()


def test_judge_with_an_evil_template_runs_nothing(tmp_path, grm_model, capsys):
    marker = tmp_path / "pwned"
    (tmp_path / "evil.jinja").write_text(ATTACKS[0].replace('MARKER', str(marker)))
    data = tmp_path / "items.jsonl"
    data.write_text(json.dumps({"prompt": "2+2?", "responses": ["4", "5"], "rewards": [1, 0]}) + "\n")
    code = main(["judge", "--model", str(grm_model), "--data", str(data), "--out", str(tmp_path / "o.jsonl"),
                 "--template", str(tmp_path / "evil.jinja"), "--max-new-tokens", "4"])
    assert code == 2 and not marker.exists()
    assert "unsafe" in capsys.readouterr().err
    assert not (tmp_path / "o.jsonl").exists()


def _tensor_file(path, name="w", value=1.0):
    write_file(path, [(name, (2,), np.float32)], iter([np.full(2, value, np.float32)]))


def _index(directory, weight_map):
    (directory / "model.safetensors.index.json").write_text(json.dumps({"weight_map": weight_map}))


def test_a_safetensors_index_cannot_point_outside_the_directory(tmp_path):
    outside, model = tmp_path / "outside", tmp_path / "model"
    outside.mkdir()
    model.mkdir()
    _tensor_file(outside / "secret.safetensors")
    for fname in ["../outside/secret.safetensors", str(outside / "secret.safetensors"),
                  "sub/../../outside/secret.safetensors"]:
        _index(model, {"w": fname})
        with pytest.raises(UnsafePathError, match="outside the model directory"):
            open_checkpoint(model)
    os.symlink(outside / "secret.safetensors", model / "linked.safetensors")
    _index(model, {"w": "linked.safetensors"})
    with pytest.raises(UnsafePathError, match="is a link to"):
        open_checkpoint(model)
    # A shard inside the directory, in a subfolder or through a link that stays inside, is fine.
    (model / "sub").mkdir()
    _tensor_file(model / "sub" / "a.safetensors", value=3.0)
    os.symlink("sub/a.safetensors", model / "inner.safetensors")
    _index(model, {"w": "inner.safetensors"})
    np.testing.assert_array_equal(open_checkpoint(model)["w"].get("w"), [3.0, 3.0])


def test_the_hub_cache_layout_still_loads(tmp_path, hf_models):
    """models--ORG--NAME/snapshots/REV/* are links into ../../blobs: that layout is allowed."""
    src, _ = hf_models("llama")
    repo = tmp_path / "models--org--tiny"
    (repo / "blobs").mkdir(parents=True)
    snap = repo / "snapshots" / "abc123"
    snap.mkdir(parents=True)
    for i, f in enumerate(sorted(src.iterdir())):
        shutil.copy2(f, repo / "blobs" / f"blob{i}")
        os.symlink(f"../../blobs/blob{i}", snap / f.name)
    cfg, params = load_hf(snap, progress=False)
    ref_cfg, ref = load_hf(src, progress=False)
    assert cfg == ref_cfg
    for a, b in zip(jax.tree.leaves(params), jax.tree.leaves(ref), strict=True):
        np.testing.assert_array_equal(np.asarray(a), np.asarray(b))


def test_only_tokenizer_files_are_copied_and_never_through_outside_links(tmp_path, chat_model):
    model = tmp_path / "model"
    shutil.copytree(chat_model, model)
    secret = tmp_path / "secret.txt"
    secret.write_text("host secret")
    os.symlink(secret, model / "README.md")
    names = sorted(p.name for p in tokenizer_files(model))
    assert "README.md" not in names and "model.safetensors" not in names and "config.json" not in names
    assert "tokenizer.json" in names
    out = tmp_path / "ckpt"
    assert main(["import-hf", str(model), str(out)]) == 0
    copied = sorted(p.name for p in (out / "tokenizer").iterdir())
    assert copied == names
    assert all("host secret" not in p.read_text(errors="replace") for p in (out / "tokenizer").iterdir())
    # A tokenizer file that links outside is refused, not followed.
    (model / "tokenizer_config.json").unlink()
    os.symlink(secret, model / "tokenizer_config.json")
    with pytest.raises(UnsafePathError, match="tokenizer_config.json"):
        tokenizer_files(model)
    assert main(["import-hf", str(model), str(tmp_path / "ckpt2")]) == 2
    assert not (tmp_path / "ckpt2").exists()
