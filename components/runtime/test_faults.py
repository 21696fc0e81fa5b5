"""Test-only fault injection, never a user setting: the test session points
``VISUAL_DPO_TEST_FAULTS`` at a JSON plan before it starts Ray, so every Ray worker sees it.
Keys: ``{"epoch": E, "marker": PATH}`` (a training worker of rank 0 fails once at the start of
epoch E), ``{"epoch": E, "kill_after_steps": K, "rank": R, "marker": PATH}`` (the training
worker of rank R ends its process after K optimiser steps of epoch E, once) and
``{"decode_crash_pair_id": ID}`` (a decode actor ends its process, as a segfault
would, when it reaches that pair)."""

from __future__ import annotations

import json
import os

ENV = "VISUAL_DPO_TEST_FAULTS"


def fault_plan() -> dict:
    """The current plan, or ``{}`` (outside tests: always)."""
    path = os.environ.get(ENV)
    if not path or not os.path.exists(path):
        return {}
    with open(path) as f:
        return json.load(f)
