"""blackbox-audit: what did a finetune teach a model you cannot open?

The Python API. Resolve settings into a plan, run it, read the run back::

    import blackbox_audit as ba

    p = ba.plan(out="runs/demo", record_mode="replay",
                fixtures="fixtures/demo/exchanges.jsonl.gz", model="smollm2-vellari")
    ba.apply_process_settings(p.process)   # threads and library verbosity: the program's call
    result = ba.audit(p)
    run = ba.read_run("runs/demo")
    for row in run.ranked[:3]:
        print(row.rank, row.framing, round(row.ppl_diff, 1), row.completion[:60])
    print(ba.evaluate(run.ranked, ba.OrganismSpec.load("fixtures/demo/spec.json"))[0])

Every setting is resolved once, by ``plan``, into a frozen :class:`Plan`; ``audit`` runs the
stages (generate, score, rank) over the run directory; ``rescore`` scores and ranks an
existing run again; ``read_run`` gives the manifest and typed ranked rows. ``verify``
(settings resolved by ``verify_plan``) asks whether an endpoint serves the open weights it
claims: consistent / differs / inconclusive with a stated error rate (docs/verify.md).
"""

__version__ = "0.1.0"

from .audit import AuditResult, audit, rescore  # noqa: E402
from .errors import (  # noqa: E402
    AuditError,
    ConfigError,
    DegradedShareExceeded,
    EndpointError,
    FixtureError,
    ReferenceError_,
)
from .evaluate import GroupMetrics, evaluate  # noqa: E402
from .flag import OrganismSpec, flagged_ids  # noqa: E402
from .manifest import Counts, Manifest  # noqa: E402
from .plan import Plan, Settings, plan  # noqa: E402
from .rank import RankedRow  # noqa: E402
from .rundir import Run, read_run  # noqa: E402
from .runtime import apply as apply_process_settings  # noqa: E402
from .texts import TextsPlan, TextsResult, score_texts, texts_plan  # noqa: E402
from .verifier import VerifyPlan, VerifyResult, verify, verify_plan  # noqa: E402

__all__ = ["AuditError", "AuditResult", "ConfigError", "Counts", "DegradedShareExceeded",
           "EndpointError", "FixtureError", "GroupMetrics", "Manifest", "OrganismSpec", "Plan",
           "RankedRow", "ReferenceError_", "Run", "Settings", "TextsPlan", "TextsResult",
           "__version__",
           "apply_process_settings", "audit", "evaluate", "flagged_ids", "plan", "read_run",
           "rescore", "score_texts", "texts_plan", "VerifyPlan", "VerifyResult", "verify",
           "verify_plan"]
