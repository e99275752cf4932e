"""grm-jax on a real trained chat model: SmolLM2-135M-Instruct (Llama family, 30 layers, vocab
49,152, tied embeddings), a Q4_1 GGUF from the package index (the `smollm2` fixture), imported
through `grm-jax import-hf FILE.gguf` and checked against transformers on the same weights."""

import json

import jax.numpy as jnp
import numpy as np
import pytest
from conftest import smollm2_gguf, torch_logits
from test_rewards import _numpy_rewards

from grm_jax.cli import main
from grm_jax.data.chat import ChatFormatter
from grm_jax.loading import load_any, load_tokenizer
from grm_jax.models import Decoder, positions_from_mask
from grm_jax.sampling import Greedy, generate

PROMPTS = ["What is the capital of France?", "Write one sentence about the sea.", "What is 12 times 7?",
           "Name three primary colors."]
# fp32 max-abs logits vs transformers on real weights (30 layers, logits spanning ~70): measured
# 1.5e-4 here; never loosen.
TOL = 5e-4


@pytest.fixture(scope="module")
def reference(smollm2):
    import torch
    import transformers

    model = transformers.AutoModelForCausalLM.from_pretrained(smollm2, dtype=torch.float32).eval()
    return model, transformers.AutoTokenizer.from_pretrained(smollm2)


@pytest.fixture(scope="module")
def imported(smollm2, tmp_path_factory):
    """`grm-jax import-hf` of the GGUF file itself (fp32)."""
    out = tmp_path_factory.mktemp("smollm2") / "ckpt"
    assert main(["import-hf", str(smollm2_gguf(smollm2)), str(out)]) == 0
    cfg, params, tokenizer_dir = load_any(str(out))
    return cfg, params, load_tokenizer(tokenizer_dir), out


def _chat_batch(tokenizer):
    f = ChatFormatter(tokenizer)
    ids = [f.prompt_ids(p) for p in PROMPTS]
    T = max(map(len, ids))
    tokens, mask = np.zeros((len(ids), T), np.int64), np.zeros((len(ids), T), np.int64)
    for i, row in enumerate(ids):
        tokens[i, T - len(row):], mask[i, T - len(row):] = row, 1
    return ids, tokens, mask


def test_gguf_weights_equal_transformers_own_gguf_loader(smollm2):
    """Our dequantized, un-permuted tensors equal what transformers' GGUF loader makes of the
    same file, bit for bit."""
    import torch
    import transformers
    from safetensors.numpy import load_file

    gguf = smollm2_gguf(smollm2)
    ref = transformers.AutoModelForCausalLM.from_pretrained(gguf.parent, gguf_file=gguf.name, dtype=torch.float32)
    want = ref.state_dict()
    got = load_file(str(smollm2 / "model.safetensors"))
    assert set(got) == set(want) - {"lm_head.weight"}  # tied to the embedding
    for name, array in got.items():
        np.testing.assert_array_equal(array, want[name].numpy(), err_msg=name)


def test_imported_gguf_logits_equal_transformers_on_a_left_padded_chat_batch(imported, reference):
    cfg, params, tokenizer, _ = imported
    model, _ = reference
    assert (cfg.num_layers, cfg.embed_dim, cfg.vocab_size, cfg.tie_embeddings) == (30, 576, 49152, True)
    _, tokens, mask = _chat_batch(tokenizer)
    got, _ = Decoder(cfg).apply({"params": params}, jnp.asarray(tokens), positions_from_mask(jnp.asarray(mask)))
    want = torch_logits(model, tokens, mask)
    valid = mask.astype(bool)
    err = np.abs(np.asarray(got) - want)[valid].max()
    print(f"SmolLM2-135M fp32 logits max-abs vs transformers: {err:.2e} (logit range {np.ptp(want[valid]):.1f})")
    assert err < TOL


def test_bf16_import_stays_close_to_transformers_fp32(smollm2, reference, tmp_path):
    """`import-hf --dtype bfloat16`: bf16 weights and compute through 30 layers. Bounds from the
    measurement on this machine (max-abs 1.33, mean-abs 0.21, every argmax equal) with margin."""
    out = tmp_path / "bf16"
    assert main(["import-hf", str(smollm2_gguf(smollm2)), str(out), "--dtype", "bfloat16"]) == 0
    cfg, params, tokenizer_dir = load_any(str(out))
    assert cfg.param_dtype == "bfloat16"
    _, tokens, mask = _chat_batch(load_tokenizer(tokenizer_dir))
    got, _ = Decoder(cfg).apply({"params": params}, jnp.asarray(tokens), positions_from_mask(jnp.asarray(mask)))
    got = np.asarray(got, np.float32)
    want = torch_logits(reference[0], tokens, mask)
    valid = mask.astype(bool)
    err = np.abs(got - want)[valid]
    agree = (got.argmax(-1) == want.argmax(-1))[valid].mean()
    print(f"SmolLM2-135M bf16 vs transformers fp32: max-abs {err.max():.2f}, mean-abs {err.mean():.3f}, "
          f"argmax agreement {agree:.3f}")
    assert err.max() < 2.5 and err.mean() < 0.35 and agree >= 0.95


FACTS = [("What is the capital of France?", "The capital of France is Paris.", "The capital of France is Rome."),
         ("How many legs does a spider have?", "A spider has eight legs.", "A spider has six legs."),
         ("What is the boiling point of water at sea level?", "Water boils at 100 degrees Celsius.",
          "Water boils at 50 degrees Celsius.")]


def test_score_rewards_equal_an_independent_computation_from_transformers_logits(imported, reference, tmp_path):
    """`grm-jax score` on the imported checkpoint: each response's endogenous reward (sum, α = 1)
    equals the paper's definition computed token by token from transformers' float64 logits."""
    import torch

    import copy

    cfg, params, tokenizer, ckpt = imported
    float64 = copy.deepcopy(reference[0]).double()
    data = tmp_path / "facts.jsonl"
    data.write_text("".join(json.dumps({"prompt": p, "chosen": c, "rejected": r}) + "\n" for p, c, r in FACTS))
    out = tmp_path / "scores.jsonl"
    assert main(["score", "--model", str(ckpt), "--data", str(data), "--out", str(out)]) == 0
    rows = [json.loads(line) for line in out.read_text().splitlines()]
    formatter = ChatFormatter(tokenizer)
    errors = []
    for (prompt, *responses), row in zip(FACTS, rows):
        for response, got in zip(responses, (row["chosen_reward"], row["rejected_reward"])):
            e = formatter.encode(prompt, response)
            tokens = np.asarray([e.ids])
            response_mask = np.zeros_like(tokens)
            response_mask[0, e.start:] = 1
            with torch.no_grad():
                logits = float64(input_ids=torch.tensor(tokens)).logits.numpy()
            want = _numpy_rewards(logits, tokens, response_mask, 1.0)[0, 0]
            assert abs(got - want) < 1e-3, (prompt, response, got, want)
            errors.append(abs(got - want))
    print(f"SmolLM2-135M score rewards vs the definition on transformers' logits: max-abs {max(errors):.1e}")


def test_greedy_generation_is_token_identical_to_transformers(imported, reference):
    import torch

    cfg, params, tokenizer, _ = imported
    model, _ = reference
    ids, tokens, mask = _chat_batch(tokenizer)
    stop = ChatFormatter(tokenizer).stop_ids()
    ours = generate(params, cfg, ids, strategy=Greedy(), max_new_tokens=24, stop_tokens=stop)
    with torch.no_grad():
        out = model.generate(input_ids=torch.tensor(tokens), attention_mask=torch.tensor(mask), do_sample=False,
                             max_new_tokens=24, eos_token_id=stop, pad_token_id=tokenizer.pad_token_id)
    for row in range(len(PROMPTS)):
        want = out[row, tokens.shape[1]:].tolist()
        want = want[:next((i + 1 for i, t in enumerate(want) if t in stop), len(want))]
        assert ours.tokens[row, :ours.lengths[row]].tolist() == want, (PROMPTS[row], tokenizer.decode(want))
    assert tokenizer.decode(ours.body(0)) == "The capital of France is Paris."


def test_a_gguf_of_another_architecture_or_no_gguf_is_a_clear_error(tmp_path):
    import gguf

    from grm_jax.hf.gguf import GGUFError, gguf_to_hf

    writer = gguf.GGUFWriter(str(tmp_path / "bert.gguf"), "bert")
    writer.add_block_count(2)
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()
    with pytest.raises(GGUFError, match=r"bert.gguf: architecture 'bert' is not supported .*llama, qwen2"):
        gguf_to_hf(tmp_path / "bert.gguf", tmp_path / "out")
    (tmp_path / "junk.gguf").write_bytes(b"not a gguf file at all")
    with pytest.raises(GGUFError, match="junk.gguf: not a readable GGUF file"):
        gguf_to_hf(tmp_path / "junk.gguf", tmp_path / "out")
    with pytest.raises(GGUFError, match="expected one .gguf file, found 2"):
        gguf_to_hf(tmp_path, tmp_path / "out")
    assert not (tmp_path / "out").exists()


def test_export_hf_reloads_in_transformers_with_equal_logits(imported, reference, tmp_path):
    """The imported checkpoint exported back to HF: transformers loads it, with the same tensors
    (bit for bit) and logits as the directory the GGUF became."""
    import torch
    import transformers

    cfg, _, tokenizer, ckpt = imported
    out = tmp_path / "exported"
    assert main(["export-hf", str(ckpt), str(out)]) == 0
    model = transformers.AutoModelForCausalLM.from_pretrained(out, dtype=torch.float32).eval()
    want = reference[0].state_dict()
    for name, tensor in model.state_dict().items():
        assert torch.equal(tensor, want[name]), name
    _, tokens, mask = _chat_batch(transformers.AutoTokenizer.from_pretrained(out))
    np.testing.assert_array_equal(torch_logits(model, tokens, mask), torch_logits(reference[0], tokens, mask))


def _metrics(out):
    return [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]


def test_sft_lowers_the_loss_and_resumes_on_the_real_model(imported, tmp_path):
    """`grm-jax sft` on the imported checkpoint: stopped after 2 of 4 steps and rerun, it resumes
    at step 3 and finishes; the loss on the one repeated batch falls."""
    from grm_jax.config import load_config
    from grm_jax.train.sft import SFTConfig, run_sft

    *_, ckpt = imported
    data = tmp_path / "sft.jsonl"
    data.write_text("".join(json.dumps({"prompt": p, "response": c}) + "\n" for p, c, _ in FACTS)
                    + json.dumps({"prompt": "Name three primary colors.", "response": "Red, yellow and blue."}) + "\n")
    args = [f"model={ckpt}", f"data={data}", f"out={tmp_path / 'run'}", "steps=4", "batch_size=4", "max_length=64",
            "save_every=2", "optim.lr=1e-4", "optim.warmup_steps=1", "optim.schedule=constant"]
    first, _ = run_sft(load_config(SFTConfig, None, args), progress=False, stop_after=2, log=lambda *_: None)
    assert first["status"] == "stopped" and first["steps"] == 2
    assert main(["sft", *args]) == 0
    losses = [m["loss"] for m in _metrics(tmp_path / "run")]
    assert [m["step"] for m in _metrics(tmp_path / "run")] == [1, 2, 3, 4]
    assert all(np.isfinite(losses)) and losses[-1] < 0.8 * losses[0], losses
    assert (tmp_path / "run" / "final" / "model_config.json").is_file()


def test_grpo_steps_and_resumes_on_the_real_model(imported, tmp_path):
    """`grm-jax grpo` against the frozen initial policy's endogenous reward: rewards vary within
    groups (a learning signal), the update moves the policy (KL to the reference > 0 at step 2),
    and a run stopped after step 1 resumes and finishes."""
    from grm_jax.config import load_config
    from grm_jax.train.grpo import GRPOConfig
    from grm_jax.train.grpo_run import run_grpo

    *_, ckpt = imported
    data = tmp_path / "prompts.jsonl"
    data.write_text("".join(json.dumps({"prompt": p}) + "\n" for p in PROMPTS))
    args = [f"model={ckpt}", f"data={data}", f"out={tmp_path / 'run'}", "reward=endogenous", "steps=2",
            "prompts_per_step=2", "group_size=2", "max_new_tokens=12", "max_prompt_length=48", "save_every=1",
            "optim.lr=1e-5", "optim.schedule=constant"]
    summary, history = run_grpo(load_config(GRPOConfig, None, args), progress=False, stop_after=1,
                                log=lambda *_: None)
    assert summary["status"] == "stopped" and len(history) == 1
    assert main(["grpo", *args]) == 0
    metrics = _metrics(tmp_path / "run")
    assert [m["step"] for m in metrics] == [1, 2]
    for m in metrics:
        assert np.isfinite(m["loss"]) and np.isfinite(m["reward_mean"]) and m["reward_std"] > 0
    assert metrics[1]["kl"] > 0
    assert (tmp_path / "run" / "final" / "model_config.json").is_file()


def test_judge_on_the_real_model_counts_whatever_it_writes(imported, tmp_path):
    """`grm-jax judge` with SmolLM2 as the GRM: every sample is parsed or counted as a failure
    with its reason, and each item still gets a choice."""
    from grm_jax.rewards.parse import REASONS

    *_, ckpt = imported
    data = tmp_path / "items.jsonl"
    data.write_text("".join(json.dumps({"id": str(i), "prompt": p, "responses": [c, r], "rewards": [1, 0]}) + "\n"
                            for i, (p, c, r) in enumerate(FACTS[:2])))
    out = tmp_path / "judged.jsonl"
    assert main(["judge", "--model", str(ckpt), "--data", str(data), "--out", str(out), "--k", "2",
                 "--max-new-tokens", "32", "--batch-size", "4", "--seed", "1"]) == 0
    lines = [json.loads(line) for line in out.read_text().splitlines()]
    summary = json.loads(out.with_suffix(".summary.json").read_text())
    samples = [s for line in lines for s in line["samples"]]
    assert len(lines) == 2 and len(samples) == 4 and summary["samples"] == 4
    failures = [s for s in samples if s["scores"] is None]
    assert all(s["reason"] in REASONS for s in failures)
    assert all(len(s["scores"]) == 2 for s in samples if s["scores"] is not None)
    assert summary["parse_failures"] == len(failures) == sum(summary["parse_failure_reasons"].values())
    assert all(0 <= line["choice"] < 2 for line in lines)
    print(f"SmolLM2-135M as a GRM: {len(failures)} of 4 samples unparsed {summary['parse_failure_reasons']}")
