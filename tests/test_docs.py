"""The documentation promises only what the code has: every `--flag` that README.md and docs/*.md
show (in code blocks and inline code) is a flag of some stage's parser, built the way the numbered
scripts build it, or of an outside tool named below; the README stays short and its links resolve."""

from __future__ import annotations

import importlib
import re
from functools import cache
from pathlib import Path

import pytest

from instructkit.cli import build_parser

pytestmark = pytest.mark.fast

ROOT = Path(__file__).resolve().parent.parent
README = ROOT / "README.md"
PAGES = (README, *sorted((ROOT / "docs").glob("*.md")))
README_MAX_LINES = 250

# Stage number -> the config dataclass its root script hands to build_parser.
STAGE_CONFIGS = {
    0: ("instructkit.data.synthesis", "SynthesisConfig"),
    1: ("instructkit.train.sft", "TrainingConfig"),
    "1b": ("instructkit.train.preference_config", "PreferenceConfig"),
    2: ("instructkit.generate.generator", "GenerationConfig"),
    3: ("instructkit.evaluate.benchmark", "BenchmarkConfig"),
    4: ("instructkit.judge.scoring", "JudgeConfig"),
    5: ("instructkit.app.chat", "ChatConfig"),
    6: ("instructkit.export.config", "ExportConfig"),
}

# Flags of other programs that the pages show in those programs' own command lines.
OTHER_TOOLS = {
    "--num_processes", "--config_file", "--cpu",  # accelerate launch
    "--nproc_per_node",  # torchrun
    "--no-deps", "--no-build-isolation", "--target",  # pip install
    "--model_args",  # lm_eval (stage 3's multi-GPU note; its --model is stage 6's flag too)
    "--openai_spec",  # litgpt serve
    "--model_outputs", "--reference_outputs", "--bench-name", "--model-list", "--judge-file", "--judge-model",  # alpaca_eval, FastChat
    "--max-model-len", "--served-model-name",  # vllm serve
    "--jinja",  # llama.cpp's llama-server
    "--records", "--tiny", "--steps",  # bench/judge_scoring.py, bench/gpu_train.py, bench/qlora.py
}
ALWAYS_VALID = {"--help", "--config"}

FENCED = re.compile(r"^(```|~~~)[^\n]*\n(.*?)^\1", re.MULTILINE | re.DOTALL)
INLINE = re.compile(r"`([^`\n]+)`")
FLAG = re.compile(r"(?<![\w-])--[A-Za-z][A-Za-z0-9_-]*")
LINK = re.compile(r"\]\(([^)\s]+)\)")


def code_text(markdown: str) -> list[str]:
    """The contents of every fenced code block and every inline code span."""
    blocks = [match.group(2) for match in FENCED.finditer(markdown)]
    prose = FENCED.sub("", markdown)
    return blocks + INLINE.findall(prose)


def mentioned_flags(markdown: str) -> set[str]:
    return {flag.rstrip("-") for code in code_text(markdown) for flag in FLAG.findall(code)}


@cache
def stage_flags() -> dict[int | str, frozenset[str]]:
    flags = {}
    for stage, (module, name) in STAGE_CONFIGS.items():
        parser = build_parser(getattr(importlib.import_module(module), name), f"stage {stage}")
        flags[stage] = frozenset(option for action in parser._actions for option in action.option_strings)
    return flags


def all_stage_flags() -> set[str]:
    return set().union(*stage_flags().values())


def test_the_collector_reads_code_blocks_and_inline_code_only():
    markdown = "Prose --not-a-flag.\n\n```bash\npython x.py --in-block 1\n```\n\nUse `--inline` here.\n"
    assert mentioned_flags(markdown) == {"--in-block", "--inline"}


def test_every_documented_flag_exists_in_a_stage_parser():
    known = all_stage_flags() | ALWAYS_VALID | OTHER_TOOLS
    unknown = sorted(f"{page.relative_to(ROOT)}: {flag}"
                     for page in PAGES for flag in mentioned_flags(page.read_text(encoding="utf-8"))
                     if flag not in known)
    assert not unknown, "flags the docs mention that no stage has:\n" + "\n".join(unknown)


def test_the_allow_list_holds_only_other_tools_flags_the_docs_use():
    mentioned = set().union(*(mentioned_flags(page.read_text(encoding="utf-8")) for page in PAGES))
    assert not OTHER_TOOLS & all_stage_flags(), "a stage has this flag itself: drop it from OTHER_TOOLS"
    assert OTHER_TOOLS <= mentioned, f"no page mentions {sorted(OTHER_TOOLS - mentioned)}: drop it from OTHER_TOOLS"


def test_readme_is_short():
    lines = len(README.read_text(encoding="utf-8").splitlines())
    assert lines < README_MAX_LINES, f"README.md has {lines} lines; move detail into docs/"


def slug(heading: str) -> str:
    """GitHub's anchor for a heading: lower case, punctuation dropped, spaces to hyphens."""
    return re.sub(r"[^\w\- ]", "", heading.strip().lower()).replace(" ", "-")


def anchors(page: Path) -> set[str]:
    text = FENCED.sub("", page.read_text(encoding="utf-8"))
    return {slug(line.lstrip("#")) for line in text.splitlines() if line.startswith("#")}


def test_readme_links_to_docs_pages_that_exist():
    links = [link for link in LINK.findall(README.read_text(encoding="utf-8")) if link.startswith("docs/")]
    assert links, "the README links to no docs/ page"
    missing = [link for link in links if not (ROOT / link.split("#")[0]).is_file()]
    assert not missing, f"README.md links to missing pages: {missing}"


@pytest.mark.parametrize("page", PAGES, ids=lambda page: str(page.relative_to(ROOT)))
def test_relative_links_resolve(page):
    broken = []
    for link in LINK.findall(page.read_text(encoding="utf-8")):
        if re.match(r"[a-z]+:", link):  # http:, https:, mailto:
            continue
        target, _, anchor = link.partition("#")
        path = (page.parent / target).resolve() if target else page
        if not path.exists():
            broken.append(link)
        elif anchor and path.suffix == ".md" and anchor not in anchors(path):
            broken.append(link)
    assert not broken, f"{page.relative_to(ROOT)}: broken links {broken}"
