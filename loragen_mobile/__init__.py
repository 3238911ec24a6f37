"""loragen-mobile: specialize small on-device LMs from a task description (LoRA-Gen) and ship
the result to phones.

The pipeline, one module each: task description -> ``generator`` -> LoRA (``lora``) -> merge
(``lora.merge``) -> ``bundle`` -> backend swap (``exporters``).
"""

__version__ = "0.1.0"
