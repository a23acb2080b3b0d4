"""The README's Python examples run as written (the service example against a real router)."""

import re
from pathlib import Path

import yaml

from bandit_router.config import EXAMPLE_CONFIG
from bandit_router.procs import free_port, start, stop

README = Path(__file__).resolve().parents[1] / "README.md"
BLOCKS = re.findall(r"```python\n(.*?)```", README.read_text(), re.S)


def test_core_example_runs(capsys):
    core = [b for b in BLOCKS if "Router(" in b]
    assert core, "the README has no Python API example"
    for block in core:
        exec(compile(block, "README.md", "exec"), {})
    assert "coding" in capsys.readouterr().out  # the example's category is inferred, not given


def test_service_example_runs_against_a_real_router(tmp_path, capsys):
    service = [b for b in BLOCKS if "base_url=" in b]
    assert service, "the README has no service example"
    sim_port, port = free_port(), free_port()
    cfg = yaml.safe_load(EXAMPLE_CONFIG)
    for m in cfg["models"]:
        m["base_url"] = f"http://127.0.0.1:{sim_port}/v1"
    (tmp_path / "router.yaml").write_text(yaml.safe_dump(cfg))
    sim = start(["simulate", "--port", str(sim_port), "--latency-scale", "0"], f"http://127.0.0.1:{sim_port}/healthz")
    try:
        router = start(["serve", "--config", str(tmp_path / "router.yaml"), "--port", str(port),
                        "--db", str(tmp_path / "readme.db")], f"http://127.0.0.1:{port}/healthz")
        try:
            for block in service:
                code = block.replace("http://127.0.0.1:8000", f"http://127.0.0.1:{port}")
                exec(compile(code, "README.md", "exec"), {})
        finally:
            stop(router)
    finally:
        stop(sim)
    out = capsys.readouterr().out
    assert "event_id" in out and "cost_usd" in out


def test_grading_config_example_is_valid():
    from bandit_router.config import GradingConfig

    blocks = [b for b in re.findall(r"```yaml\n(.*?)```", README.read_text(), re.S) if "grading:" in b]
    assert blocks
    for block in blocks:
        GradingConfig.model_validate(yaml.safe_load(block)["grading"])


def test_provider_config_example_is_valid():
    from bandit_router.config import parse_config

    blocks = [b for b in re.findall(r"```yaml\n(.*?)```", README.read_text(), re.S) if "api.anthropic.com" in b]
    assert blocks
    cfg = parse_config(yaml.safe_load(blocks[0]))
    assert {m.provider for m in cfg.models} == {"openai", "anthropic"}
