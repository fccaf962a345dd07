"""What a person may do to the receiver, from the API or the desk: approve or cancel a job,
pause or resume renewals. One place, so that both journal who did it the same way and wake
the engine the same way.

``job_action`` raises ``KeyError`` for an unknown job and ``JobConflict`` when the job's
state does not allow the action (the message says why); nothing is changed then.
"""

from __future__ import annotations

import logging
from typing import Final, Literal

from vmm_cert_exporter.receiver.engine import Engine
from vmm_cert_exporter.receiver.journal import Job, Journal, PauseState

log = logging.getLogger(__name__)

JobAction = Literal["approve", "cancel"]
JOB_ACTIONS: Final[tuple[JobAction, ...]] = ("approve", "cancel")


def job_action(
    journal: Journal, engine: Engine, action: JobAction, job_id: int, identity: str
) -> Job:
    """Approve or cancel job ``job_id`` as ``identity``; journaled with who and when."""
    if action == "approve":
        job = journal.approve(job_id, identity)
    else:
        job = journal.cancel(job_id, identity)
    log.warning(f"job {action}", extra={"job": job_id, "by": identity})
    engine.wake()
    return job


def set_paused(journal: Journal, engine: Engine, paused: bool, identity: str) -> PauseState:
    """The global pause switch, persisted and journaled with who and when."""
    state = journal.set_paused(paused, identity)
    log.warning("pause switch", extra={"paused": state.paused, "by": identity})
    engine.wake()
    return state
