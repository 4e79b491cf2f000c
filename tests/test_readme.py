"""The README's Python examples run as written (in a scratch folder)."""

import re
from pathlib import Path

README = Path(__file__).resolve().parents[1] / "README.md"


def test_readme_python_examples_run(tmp_path, monkeypatch):
    blocks = re.findall(r"```python\n(.*?)```", README.read_text(encoding="utf-8"), re.S)
    assert len(blocks) >= 2
    monkeypatch.chdir(tmp_path)
    namespace = {}
    for i, code in enumerate(blocks):
        exec(compile(code, f"README.md python block {i + 1}", "exec"), namespace)
    assert (tmp_path / "islands-model" / "model.json").is_file()


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
