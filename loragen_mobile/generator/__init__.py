"""The LoRA-Gen generator: task description -> routed LoRA for every edge layer.

``model`` holds the network (meta tokens, routers, experts), ``train`` the training loop
(single process or torchrun), ``store`` saving/loading and generation, ``evaluate`` the
comparison against the baselines.
"""

from .model import EdgeLayout, GeneratorConfig, LoraGenerator, batched_lora, keep_top_k, routed_factors
from .store import (Generator, build_generator, generate_adapter, generate_adapters, generate_factors,
                    load_generator, save_generated, task_sha256)
from .train import load_config, train

__all__ = ["EdgeLayout", "GeneratorConfig", "LoraGenerator", "batched_lora", "keep_top_k", "routed_factors",
           "Generator", "build_generator", "generate_adapter", "generate_adapters", "generate_factors",
           "load_generator", "save_generated", "task_sha256", "load_config", "train"]
