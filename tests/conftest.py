import os
import warnings

import pytest

os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
warnings.filterwarnings("ignore", category=DeprecationWarning)


@pytest.fixture(scope="session")
def preset_dirs(tmp_path_factory):
    """The two edge presets saved once as HF directories, shared by every test."""
    from loragen_mobile.models import init_model_dir

    root = tmp_path_factory.mktemp("presets")
    return {p: init_model_dir(p, root / p, seed=0) for p in ("tiny-llama", "tiny-gemma")}
