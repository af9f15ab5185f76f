"""experiments/adapter.py on the tiny GGUF: LoRA matched to the CMS adapter, and resume."""

import importlib.util
import json
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]


def _load(path: Path, name: str):
    spec = importlib.util.spec_from_file_location(name, path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_lora_matches_the_cms_adapter_and_a_rerun_resumes(tiny_gguf, tmp_path, monkeypatch):
    script = _load(ROOT / "experiments" / "adapter.py", "adapter_under_test")
    config = _load(ROOT / "experiments" / "configs" / "adapter_continual.py", "cfg").get_config()
    config.phases = ("shakespeare",)
    config.variants = ("frozen", "lora", "hope_cms")
    config.layers = (1,)
    config.steps = 2
    config.batch_size = 2
    config.seq_len = 16
    config.eval_seq_len = 16
    config.eval_windows = 2
    config.train_chars = 4000
    config.test_chars = 2000
    config.max_len = 64
    config.out_dir = str(tmp_path)
    monkeypatch.setattr(script, "fetch_smollm2", lambda: tiny_gguf[0])
    script.run("adapter_continual", config)
    saved = json.loads((tmp_path / "adapter_continual.json").read_text())
    lora, cms = saved["variants"]["lora"], saved["variants"]["hope_cms"]
    assert lora["lora_rank"] >= 1
    assert abs(lora["trainable_params"] - cms["trainable_params"]) <= 0.5 * cms["trainable_params"]
    assert saved["variants"]["frozen"]["trainable_params"] == 0
    # a rerun with the same config keeps every finished variant (same wall times)
    script.run("adapter_continual", config)
    again = json.loads((tmp_path / "adapter_continual.json").read_text())
    assert again["variants"] == saved["variants"]
    # another config starts over
    config.steps = 3
    script.run("adapter_continual", config)
    third = json.loads((tmp_path / "adapter_continual.json").read_text())
    assert third["variants"]["lora"]["wall_s"] != saved["variants"]["lora"]["wall_s"]
