"""Adapter experiment (b) + (d): the continual sequence Shakespeare → Milton → fortunes.

Purpose: held-out perplexity on every domain seen so far after each phase, for the frozen model,
full fine-tuning of the adapted blocks, LoRA, the Titans and self-modifying memory pathways and
Hope-Attention CMS levels (forgetting = rise in an earlier domain's perplexity).

CPU size: as `adapter_shakespeare` (blocks 28–29 adapted, 64-token windows, batch 4) with
`steps` steps per phase. Expected: full fine-tuning forgets most; CMS with a slow level and the
gated memories forget less; with so few steps all differences are small.

LoRA's rank is chosen so that it trains as many parameters as the CMS adapter (`lora_match`),
so "forgets less" is not "learns less with fewer parameters".

Commands (seeds 0–2; each file resumes its finished variants; then mean ± std and the
stability–plasticity plot):
`python experiments/adapter.py adapter_continual`,
`python experiments/adapter.py adapter_continual seed=1 out_name=adapter_continual_seed1` (and 2),
`python experiments/adapter.py summarize adapter_continual`
(results in docs/results/adapters/adapter_continual*.{md,json}, adapter_continual_stability.png).
"""

import importlib.util
from pathlib import Path


def get_config(arg=None):
    del arg
    path = Path(__file__).with_name("adapter_shakespeare.py")
    spec = importlib.util.spec_from_file_location("adapter_shakespeare", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    c = module.get_config()
    c.description = "Continual Shakespeare → Milton → fortunes; perplexity on every seen domain."
    c.out_name = "adapter_continual"
    c.phases = ("shakespeare", "milton", "fortunes")
    c.variants = ("frozen", "titans", "lora", "full", "hope_cms")
    c.lora_match = "hope_cms"  # LoRA's rank gives it the CMS adapter's trainable parameters
    c.steps = 100  # optimizer steps per phase
    return c
