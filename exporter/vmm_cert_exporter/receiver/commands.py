"""The ``receiver``, ``renew`` and ``jobs`` subcommands.

- ``vmm-cert-exporter receiver --config FILE``: the webhook service until SIGTERM.
- ``vmm-cert-exporter renew --config FILE --host FQDN [--execute]``: the same runbook by
  hand. Without ``--execute`` it reads both ends and prints the plan with the exact
  PowerShell of every step, changing nothing and writing no journal entry. With
  ``--execute`` it runs the job now (journaled, as a ``cli`` job), bypassing maintenance
  windows, approval and cooldown (the person at the keyboard is the approval) but not the
  allowlist, the pause switch or the one-active-job-per-host rule.
- ``vmm-cert-exporter jobs --config FILE``: the journal, as a table or JSON.

Exit codes: 0 done (or nothing to do), 1 the renewal or service failed, 2 bad input.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import signal
import sys
import threading
import time
from types import FrameType
from typing import Any, TextIO

from vmm_cert_exporter.config import Config, ConfigError, load_config, validate_fqdn
from vmm_cert_exporter.logs import setup_logging
from vmm_cert_exporter.receiver import planner, runbook
from vmm_cert_exporter.receiver.discovery import InventoryCache
from vmm_cert_exporter.receiver.engine import Engine
from vmm_cert_exporter.receiver.journal import (
    JOB_STATUSES,
    ActiveJobExists,
    Job,
    Journal,
    JournalError,
    OwnerLock,
    iso,
    owner_alive,
)
from vmm_cert_exporter.receiver.runbook import StepFailed
from vmm_cert_exporter.remoting import WinRMRunner

log = logging.getLogger(__name__)


def _load(path: str) -> Config | None:
    try:
        config = load_config(path)
    except ConfigError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return None
    if config.receiver is None:
        print(
            f"error: {path}: no receiver: section; the renewal receiver needs at least "
            "receiver.run_as_account and credentials (see docs/renewal.md)",
            file=sys.stderr,
        )
        return None
    return config


# --------------------------------------------------------------------------------------------
# receiver


def receiver_command(args: argparse.Namespace) -> int:
    setup_logging(args.log_level, args.log_format)
    config = _load(args.config)
    if config is None or config.receiver is None:
        return 2
    # imported when serving only
    from vmm_cert_exporter.receiver.service import start_receiver
    from vmm_cert_exporter.webconfig import load_web_config

    web_config_file = getattr(args, "web_config_file", None)
    try:
        web_config = load_web_config(web_config_file) if web_config_file else None
    except ConfigError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    try:
        receiver = start_receiver(config, listen_address=args.listen_address, web_config=web_config)
    except (OSError, JournalError, ValueError) as exc:
        print(f"error: cannot start the receiver: {exc}", file=sys.stderr)
        return 1
    if config.receiver.execute:
        log.warning(
            "EXECUTE MODE: firing alerts renew certificates on production hosts",
            extra={"allow_hosts": ",".join(config.receiver.allow_hosts)},
        )
    else:
        log.info("dry-run mode: jobs are planned and journaled, nothing is changed")
    stopping = threading.Event()

    def on_signal(signum: int, frame: FrameType | None) -> None:
        stopping.set()

    signal.signal(signal.SIGTERM, on_signal)
    signal.signal(signal.SIGINT, on_signal)
    stopping.wait()
    log.info("shutting down: running renewals finish first")
    receiver.stop()
    return 0


# --------------------------------------------------------------------------------------------
# renew


def _print_plan(steps: list[planner.PlannedStep], out: TextIO) -> None:
    for number, step in enumerate(steps, 1):
        if step.skip_reason is not None:
            print(
                f"\nstep {number}: {step.name} on {step.target}: skipped ({step.skip_reason})",
                file=out,
            )
            continue
        params = json.dumps(step.params, ensure_ascii=False)
        print(f"\nstep {number}: {step.name} on {step.target}, parameters {params}", file=out)
        print("----- PowerShell sent (exactly) -----", file=out)
        out.write(step.script)
        print("----- end -----", file=out)
    print(
        f"\nstep {len(steps) + 1}: verify: read both ends again; expect exactly one SCVMM "
        "certificate, NotAfter at least min_validity away, TrustedPeople thumbprint matching",
        file=out,
    )


def _print_job(journal: Journal, job: Job, out: TextIO) -> None:
    print(f"\njob {job.id}: {job.status}" + (f" ({job.reason})" if job.reason else ""), file=out)
    for step in journal.steps(job.id):
        detail = f": {step.detail}" if step.detail else ""
        print(
            f"  attempt {step.attempt} {step.name} on {step.target}: {step.status}{detail}",
            file=out,
        )


def renew_command(args: argparse.Namespace) -> int:
    setup_logging(args.log_level, args.log_format)
    config = _load(args.config)
    if config is None or config.receiver is None:
        return 2
    rcfg = config.receiver
    out = sys.stdout
    try:
        validate_fqdn(args.host)
    except ValueError as exc:
        print(f"error: --host: {exc}", file=sys.stderr)
        return 2
    runner = WinRMRunner(config.winrm)
    inventory = InventoryCache(config, runner).refresh()
    computer = inventory.find(args.host)
    if computer is None:
        print(
            f"error: {args.host} is not in the inventory (configured hosts and what the VMM "
            "servers report)",
            file=sys.stderr,
        )
        return 2
    target = planner.renewal_target(computer, inventory.vmm_views)
    refusal = planner.policy_refusal(rcfg, target.computer)
    if refusal is not None:
        print(f"error: {computer.fqdn} {refusal} (receiver policy)", file=sys.stderr)
        return 2
    if target.vmm_server is None:
        print(f"error: no VMM server known to manage {computer.fqdn}", file=sys.stderr)
        return 2
    mode = "EXECUTE" if args.execute else "DRY RUN (nothing will be changed)"
    print(
        f"{mode}: {computer.fqdn} ({target.computer.role}), VMM server {target.vmm_server}",
        file=out,
    )
    try:
        state = runbook.read_state(runner, computer.fqdn, target.vmm_server)
    except StepFailed as exc:
        print(f"preflight failed: {exc.reason}", file=out)
        return 1
    now = time.time()
    # the same decisions, in the same order, as the engine's preflight
    procedure, why = planner.choose_procedure(state.computer, state.view)
    problems = runbook.problems(state, now=now, min_validity=rcfg.min_validity)
    print(f"VMM state: {runbook.vmm_state_text(state.computer)}", file=out)
    print(f"found: {runbook.describe_certificates(state.certificates)}", file=out)
    print(f"trusted by VMM: {state.trusted}", file=out)
    if procedure is None:
        print(f"cannot renew: {why}", file=out)
        return 1
    if not problems:
        print("already fresh: nothing to do", file=out)
        return 0
    print("not fresh: " + "; ".join(problems), file=out)
    print(f"procedure: {procedure} ({why})", file=out)
    try:
        if procedure == planner.REMOVE_REGISTER:
            runbook.check_run_as_account(runner, state.view.vmm_server, rcfg.run_as_account)
        steps = runbook.plan_steps(state, procedure, rcfg.run_as_account)
    except StepFailed as exc:
        print(f"cannot renew: {exc.reason}", file=out)
        return 1
    _print_plan(steps, out)
    if not args.execute:
        print("\ndry run: nothing was changed; run again with --execute to renew", file=out)
        return 0
    return _execute(config, runner, target, procedure, out)


def _execute(
    config: Config,
    runner: WinRMRunner,
    target: planner.RenewalTarget,
    procedure: str,
    out: TextIO,
) -> int:
    if config.receiver is None:
        return 2
    computer = target.computer
    host = computer.fqdn
    try:
        journal = Journal(config.receiver.journal)
    except JournalError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    owner = OwnerLock(config.receiver.journal, prefix="renew")
    try:
        engine = Engine(config, journal, runner, owner=owner, executes=True)
        pause = engine.pause_state()
        if pause.paused:
            print(f"error: the receiver is paused ({pause.by}); resume it first", file=sys.stderr)
            return 1
        journal.recover(lambda o: owner_alive(journal.path, o), exclude=owner.id)
        job = journal.active_job(host)
        kind = "run"
        if job is not None:
            if job.status == "running":
                print(
                    f"error: job {job.id} for {host} is running now (owner {job.owner}); "
                    "wait for it (vmm-cert-exporter jobs)",
                    file=sys.stderr,
                )
                return 1
            if job.mode != "execute":
                print(
                    f"error: dry-run job {job.id} for {host} is being planned; retry shortly",
                    file=sys.stderr,
                )
                return 1
            kind = "resume" if job.status == "interrupted" else "run"
            print(f"\ntaking over job {job.id} ({job.status}) now", file=out)
        else:
            try:
                job = journal.create_job(
                    host=computer.fqdn,
                    role=computer.role,
                    vmm_server=target.vmm_server,
                    is_vmm_server=computer.is_vmm_server,
                    procedure=procedure,
                    mode="execute",
                    source="cli",
                    reason=f"renew --execute by {os.environ.get('USER', 'unknown')}",
                )
            except ActiveJobExists as exc:
                print(
                    f"error: job {exc.job_id} for {host} was created a moment ago (by the "
                    "receiver); see vmm-cert-exporter jobs",
                    file=sys.stderr,
                )
                return 1
        final = engine.run_now(job, kind)
        _print_job(journal, final, out)
        return 0 if final.status in ("succeeded", "already-fresh") else 1
    finally:
        owner.release()
        journal.close()


# --------------------------------------------------------------------------------------------
# jobs


def jobs_command(args: argparse.Namespace) -> int:
    config = _load(args.config)
    if config is None or config.receiver is None:
        return 2
    path = config.receiver.journal
    if not os.path.exists(path):
        print(f"no journal yet at {path} (the receiver has not run)", file=sys.stderr)
        return 0
    if args.status is not None and args.status not in JOB_STATUSES:
        print(f"error: --status must be one of {', '.join(JOB_STATUSES)}", file=sys.stderr)
        return 2
    try:
        journal = Journal(path)
    except JournalError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    try:
        jobs = journal.list_jobs(limit=args.limit, status=args.status, host=args.host)
        if args.json:
            docs: list[dict[str, Any]] = []
            for job in jobs:
                doc = job.to_json()
                doc["steps"] = [s.to_json() for s in journal.steps(job.id)]
                docs.append(doc)
            json.dump({"journal": path, "jobs": docs}, sys.stdout, indent=1, ensure_ascii=True)
            sys.stdout.write("\n")
            return 0
        header = ("ID", "HOST", "PROCEDURE", "MODE", "STATUS", "TRY", "UPDATED", "REASON")
        rows = [
            (
                str(j.id),
                j.host,
                j.procedure,
                j.mode,
                j.status,
                str(j.attempt),
                iso(j.updated_at) or "",
                (j.reason or "")[:100].replace("\n", " "),
            )
            for j in jobs
        ]
        widths = [max(len(r[i]) for r in [header, *rows]) for i in range(len(header) - 1)]
        for row in [header, *rows]:
            cells = [c.ljust(w) for c, w in zip(row[:-1], widths, strict=True)]
            print("  ".join([*cells, row[-1]]).rstrip())
        return 0
    finally:
        journal.close()
