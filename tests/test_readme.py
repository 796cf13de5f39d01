"""README stays true: its model table is the registry's, its test command is what CI runs."""

import re
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def test_model_table_in_sync():
    result = subprocess.run([sys.executable, "scripts/model_table.py", "--check"], cwd=ROOT, capture_output=True,
                            text=True)
    assert result.returncode == 0, result.stdout + result.stderr


def test_ci_runs_the_readme_test_command():
    readme = (ROOT / "README.md").read_text()
    commands = re.findall(r"```bash\n(.*?)\n```", readme, re.S)
    test_cmd = next(c for c in commands if "pytest" in c).split("&& ")[-1].strip()
    ci = (ROOT / ".ci" / "run").read_text()
    assert test_cmd in ci.splitlines(), (test_cmd, ci)


def test_quickstart_command_names_the_quickstart_config():
    readme = (ROOT / "README.md").read_text()
    assert "python train.py --config configs/quickstart.yaml" in readme
    assert (ROOT / "configs" / "quickstart.yaml").is_file()
