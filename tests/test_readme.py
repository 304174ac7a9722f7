"""The README's command blocks run as written, in order, against a server they start."""

import subprocess
import sys
from pathlib import Path

from tests.readme_commands import README, ROOT, blocks, readme_test_command, script

CI_RUN = ROOT / ".ci" / "run"


def test_every_readme_block_runs_in_order() -> None:
    result = subprocess.run(
        [sys.executable, str(ROOT / "tests" / "readme_commands.py"), "run"],
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert result.returncode == 0, f"{result.stdout[-4000:]}\n{result.stderr[-4000:]}"
    out = result.stdout
    ran = [lang for lang, body in blocks(README.read_text()) if lang in ("bash", "python")]
    assert out.count("--- README block") == len(ran) - 1  # all but the test command
    # What the quick start and the story print, checked against the server's real answers.
    assert '"platform":"onnxruntime_onnx"' in out
    assert '"model_name":"digits"' in out and '"predictions"' in out
    assert "digits: version 1 -> 2 (activated)" in out  # the story's recalibration
    assert "digits: version 1 is active" in out  # and its rollback


def test_the_serve_line_starts_in_the_background_and_is_waited_for() -> None:
    text = (
        "```bash\nbnserve serve --models models --port 8000 --grpc-port 8001\n"
        "curl localhost:8000/v2\n```\n```python\nclient('localhost:8001')\n```\n"
    )
    body = script(text, install=False, port=12345, grpc_port=12346)
    serve = body.index("bnserve serve --models models --port 12345 --grpc-port 12346 >")
    wait = body.index("http://127.0.0.1:12345/v2/health/ready")
    assert serve < wait < body.index("curl localhost:12345/v2") < body.index("'localhost:12346'")


def test_ci_runs_the_readme_test_command_in_a_fresh_virtualenv() -> None:
    command = readme_test_command(README.read_text())
    assert command.startswith("pip install torch==2.13.0 && pip install -e '.[test]' -c ")
    assert command.endswith("python -m pytest -q")
    ci = CI_RUN.read_text()
    assert 'python3 -m venv "$venvs/test"' in ci and "test-command" in ci
    assert 'python3 -m venv "$venvs/run"' in ci and "readme_commands.py run --install" in ci
    assert Path(ROOT, "constraints.txt").is_file()
