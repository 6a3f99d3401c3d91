"""Shared test fixtures: the packaged reference tokenizer and model, loaded once per session."""

from __future__ import annotations

import os
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "tests"))
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")


def unavailable(reason: str):
    """What a test needs is not here (a server that would not build or start, a browser, a
    data file). Locally: a skip that says why. Under CI=true: a failure, never a silent pass
    (CI is where the whole suite must really run). A test that needs a GPU is not this: it
    skips everywhere without one."""
    if os.environ.get("CI", "").lower() in ("1", "true", "yes"):
        pytest.fail(f"CI=true and {reason}", pytrace=False)
    pytest.skip(reason)


@pytest.fixture(autouse=True)
def _fresh_secret_registry():
    """Each test starts with no secret registered process-wide (blackbox_audit.redact)."""
    from blackbox_audit.redact import forget_all

    forget_all()
    yield
    forget_all()


@pytest.fixture(scope="session")
def ref_spec():
    from blackbox_audit.reference import packaged_smollm2

    return packaged_smollm2()


@pytest.fixture(scope="session")
def tokenizer(ref_spec):
    from blackbox_audit.reference import load_tokenizer

    return load_tokenizer(ref_spec)


@pytest.fixture(scope="session")
def reference(ref_spec, tokenizer):
    from blackbox_audit.reference import ReferenceModel

    return ReferenceModel(ref_spec, device="cpu", tokenizer=tokenizer)


@pytest.fixture(scope="session")
def chat_template(tokenizer):
    from blackbox_audit.framing import ChatTemplate

    return ChatTemplate.from_tokenizer(tokenizer, "smollm2")


@pytest.fixture(scope="session")
def view(tokenizer, chat_template):
    from blackbox_audit.align import TokenizerView

    return TokenizerView(tokenizer, chat_template)
