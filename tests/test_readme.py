"""The README's first example runs as pasted and prints what its comments say; its quick start and links hold."""

import os
import re
import subprocess
import sys

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def readme() -> str:
    with open(os.path.join(ROOT, "README.md"), encoding="utf-8") as f:
        return f.read()


def code_blocks(text: str) -> list[tuple[str, str]]:
    """(language, code) of every fenced block, in order."""
    return re.findall(r"^```(\w*)\n(.*?)^```$", text, flags=re.M | re.S)


def test_first_example_runs_as_pasted():
    blocks = code_blocks(readme())
    lang, code = blocks[0]
    assert lang == "python"
    assert readme().index(code) < readme().index("## Quick start"), "the example comes before the quick start"
    # A fresh interpreter, in an empty directory: nothing defined beforehand, qkernels as installed.
    run = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300,
                         cwd=os.path.join(ROOT, "tests"))
    assert run.returncode == 0, run.stderr
    printed = run.stdout.splitlines()
    promised = [line.split("# ")[-1] for line in code.splitlines() if line.startswith("print(") and "# " in line]
    assert printed == promised == ["True", "torch.float32 (3, 8) (3,)"]


def test_quick_start_is_two_commands_in_their_own_blocks():
    text = readme()
    section = text[text.index("## Quick start\n"):text.index("\n## Use\n")]
    assert [code.strip() for _, code in code_blocks(section)] == ["bash tools/quickstart.sh", "bash tools/test.sh"]
    with open(os.path.join(ROOT, "tools", "quickstart.sh"), encoding="utf-8") as f:
        script = f.read()
    assert "qkernels.info" in section and "-m qkernels.info" in script
    assert "--bits 2,3,4" in script and "--methods fp,ptq,qat" in script and "runs/quickstart" in section
    assert "bash tools/test.sh" in script.split("qkernels.train compare", 1)[1], "it ends with the next command"


def test_links_to_docs_resolve():
    text = readme()
    links = re.findall(r"\]\((docs/[^)#]+)(?:#([^)]+))?\)", text)
    assert {path for path, _ in links} >= {"docs/internals.md", "docs/numerics.md"}
    for path, anchor in links:
        with open(os.path.join(ROOT, path), encoding="utf-8") as f:
            doc = f.read()
        if anchor:  # GitHub's anchors: headings lowercased, punctuation dropped, spaces as hyphens
            anchors = {re.sub(r"[^\w\- ]", "", h.strip().lower()).replace(" ", "-")
                       for h in re.findall(r"^#+ (.*)$", doc, flags=re.M)}
            assert anchor in anchors, f"{path}#{anchor}"


def test_says_what_torch_ao_deprecation_means_here():
    text = readme()
    section = text[text.index("### torch.ao is deprecated in torch"):]
    section = section[:section.index("\n### ", 5)]
    for claim in ("do\n  not use torch.ao", "qkernels.nn", "qkernels.train", "prepare_pt2e"):
        assert claim.replace("\n  ", " ") in section.replace("\n  ", " "), claim


def test_license_matches_pyproject():
    with open(os.path.join(ROOT, "pyproject.toml"), encoding="utf-8") as f:
        assert 'license = { text = "BSD-3-Clause" }' in f.read()
    with open(os.path.join(ROOT, "LICENSE"), encoding="utf-8") as f:
        license_text = f.read()
    assert license_text.startswith("BSD 3-Clause License")
    assert "Neither the name of the copyright holder nor the names of its" in license_text
