"""The README and docs/ are a user's documents: their Python examples run as written (in a scratch folder),
their links resolve, and they say what is, not how it came to be."""

import re
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
README = ROOT / "README.md"
DOCS = sorted((ROOT / "docs").glob("*.md"))


def _run_python_blocks(path: Path, tmp_path, monkeypatch) -> int:
    blocks = re.findall(r"```python\n(.*?)```", path.read_text(encoding="utf-8"), re.S)
    monkeypatch.chdir(tmp_path)
    namespace = {}
    for i, code in enumerate(blocks):
        compiled = compile(code, f"{path.name} python block {i + 1}", "exec")
        if "napari.Viewer(" in code:
            # opens a window: checked, not run; what it calls is tested in tests/test_ome.py
            from bigseg import viewer

            assert callable(viewer.layers) and "from bigseg.viewer import layers" in code
            continue
        exec(compiled, namespace)
    return len(blocks)


def test_readme_python_examples_run(tmp_path, monkeypatch):
    assert _run_python_blocks(README, tmp_path, monkeypatch) >= 2
    assert (tmp_path / "islands-model" / "model.json").is_file()


@pytest.mark.parametrize("page", [p.name for p in DOCS])
def test_docs_python_examples_run(page, tmp_path, monkeypatch):
    _run_python_blocks(ROOT / "docs" / page, tmp_path, monkeypatch)


def test_readme_is_a_users_document():
    text = README.read_text(encoding="utf-8")
    assert len(text.splitlines()) <= 300
    headings = re.findall(r"^## (.+)$", text, re.M)
    assert headings[0] == "Quick start"
    for needed in ("Install", "A first run on your images", "Python", "Outputs", "Reading the maps", "Limits",
                   "Citing", "Licence", "Where to ask"):
        assert needed in headings, needed
    for name in ("LICENSE", "CITATION.cff"):
        assert (ROOT / name).is_file()
    assert "BSD 3-Clause" in (ROOT / "LICENSE").read_text() and "the bigseg authors" in (ROOT / "LICENSE").read_text()


@pytest.mark.parametrize("page", ["README.md"] + [f"docs/{p.name}" for p in DOCS])
def test_documents_link_to_what_exists_and_name_no_work_history(page):
    text = (ROOT / page).read_text(encoding="utf-8")
    for target in re.findall(r"\]\(([^)#]+)\)", text):
        if "://" not in target:
            assert ((ROOT / page).parent / target).exists(), f"{page} links to {target}, which does not exist"
    for pattern in (r"\bIssue \d+", r"\bissue #?\d+", r"\bstop \d+", r"\bsession\b", r"previous stop"):
        assert not re.search(pattern, text, re.I), f"{page}: {pattern}"
    for script in re.findall(r"scripts/(\w+\.py)", text):
        assert (ROOT / "scripts" / script).is_file(), f"{page} names scripts/{script}, which does not exist"


def _quick_start() -> list[str]:
    """The README's Quick start commands, in order: the shell blocks of its Quick start section."""
    text = README.read_text(encoding="utf-8")
    section = text.split("## Quick start", 1)[1].split("\n## ", 1)[0]
    return [b.strip() for b in re.findall(r"```bash\n(.*?)```", section, re.S)]


def test_ci_runs_the_quick_start_as_written_and_every_test():
    install_demo, install_test = _quick_start()
    assert install_demo.startswith("python3 -m pip install . && bigseg demo")
    assert install_test == 'python3 -m pip install -e ".[test]" && python3 -m pytest -q tests'
    ci = (README.parent / ".ci" / "run").read_text(encoding="utf-8").splitlines()
    lines = [line.strip() for line in ci]
    first, second = lines.index(f"{install_demo} || exit"), lines.index(f"{install_test} || exit")
    heavy = lines.index('python3 -m pip install -e ".[test-full]" || exit')
    assert first < heavy < lines.index("export BIGSEG_REQUIRE_FULL=1") < second


#: what no file may name: the work that made it (an issue number, a stop, a session), which belongs to git
HISTORY = re.compile(r"\bissue #?\d+|\bstop \d+|\bsession\b|previous stop", re.I)


def test_no_file_names_an_issue_a_stop_or_a_session():
    # the project's own folders and top-level files (not a virtual environment or demo output beside them)
    folders = ("bigseg", "tests", "scripts", "docs", "configs", ".ci")
    files = [p for folder in folders for p in (ROOT / folder).rglob("*")
             if p.is_file() and p.suffix in (".py", ".md", ".yaml", "") and "__pycache__" not in p.parts]
    files += [p for p in ROOT.iterdir() if p.is_file() and p.suffix in (".md", ".toml", ".cff")]
    assert len(files) > 20
    for path in files:
        # pytest's own word for a fixture's scope is no work session
        text = path.read_text(encoding="utf-8", errors="replace").replace('scope="session"', "")
        if path.name == "test_readme.py":
            continue
        found = HISTORY.search(text)
        assert not found, f"{path.relative_to(ROOT)}: {found.group(0)!r}"
