"""Process-wide settings, applied once by an entry point (the CLI, a scorer replica).

Library code never changes the process: torch's thread count and the verbosity of
transformers, Hugging Face Hub and tqdm are the program's to set. The plan carries them
(``plan.ProcessSettings``); the CLI calls :func:`apply` before it loads a model, and a Python
user who wants the same quiet, bounded process calls it too.
"""

from __future__ import annotations

import gc
import logging
import os

from .plan import ProcessSettings


def apply(settings: ProcessSettings) -> None:
    """Set torch's threads, quieten the model libraries (their progress bars and advisories
    would otherwise interleave with our own progress lines), and pace the cyclic garbage
    collector for a client with thousands of answers in flight: the objects alive at this
    point (the imported libraries) are moved out of its way (``gc.freeze``), and its youngest
    generation is collected less often (``ProcessSettings.gc_young_threshold``)."""
    if settings.quiet_libraries:
        os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")
        os.environ.setdefault("HF_HUB_DISABLE_PROGRESS_BARS", "1")
        os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
        os.environ.setdefault("TQDM_DISABLE", "1")  # GGUF dequantisation draws a bar
        logging.getLogger("transformers").setLevel(logging.ERROR)
        try:
            from transformers.utils import logging as hf_logging

            hf_logging.disable_progress_bar()
            hf_logging.set_verbosity_error()
        except ImportError:
            pass
    import torch

    if torch.get_num_threads() != settings.torch_threads:
        torch.set_num_threads(settings.torch_threads)
    if settings.gc_young_threshold is not None:
        gc.freeze()
        gc.set_threshold(settings.gc_young_threshold, *gc.get_threshold()[1:])
