"""Toy job kinds for the executor tests (imported by worker processes: ``imports=[__name__]``)."""

from __future__ import annotations

import os
import time
from typing import Any, Dict, Mapping

from branchnas.errors import BranchnasError
from branchnas.pipeline.jobs import _KINDS, register_job_kind
from branchnas.training.rundir import RunDir

if "toy_square" not in _KINDS:  # imported twice (as a test helper and by name): register once

    @register_job_kind("toy_square")
    def _square(spec: Mapping[str, Any]) -> Dict[str, Any]:
        """Sleeps ``sleep`` seconds, then stores x² (and who computed it) as the run's result."""
        p = spec["params"]
        time.sleep(float(p.get("sleep", 0.0)))
        run = RunDir(spec["out_dir"])
        run.mark_done({"value": p["x"] ** 2, "pid": os.getpid()})
        return run.read_result()

    @register_job_kind("toy_fail")
    def _fail(spec: Mapping[str, Any]) -> Dict[str, Any]:
        raise BranchnasError(f"toy job {spec['params'].get('x')} failed on purpose")
