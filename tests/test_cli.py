import subprocess
import sys


def test_help_lists_commands():
    out = subprocess.run(
        [sys.executable, "-m", "l2smerge", "--help"], capture_output=True, text=True, check=True
    ).stdout
    assert "l2smerge" in out or "Usage" in out
