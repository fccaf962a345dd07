"""The renewal receiver: Alertmanager webhook → guarded SCVMM renewal runbooks.

Modules, in the order data flows through them:

- ``config`` is the ``receiver:`` section of the configuration file.
- ``webhook`` parses Alertmanager's webhook (version 4) strictly (the HTTP layer,
  ``vmm_cert_exporter.http``, has checked the credentials).
- ``intake`` turns firing alerts into journaled jobs, or records why it would not.
- ``journal`` is the SQLite (WAL) memory: jobs, attempts, steps, alerts, events.
- ``guards`` decides whether a job may start now (mode, pause, approval, windows, limits,
  a VMM server after its cohort); ``passes`` is what one scheduling pass knows from its one
  read of the active jobs.
- ``planner`` chooses the procedure and is the only place that says what "fresh" means.
- ``discovery`` keeps the inventory (the exporter's own inventory code, refreshed).
- ``runbook`` reads state and runs the contract scripts over WinRM; ``engine`` schedules
  jobs and journals every step; ``metrics`` is the receiver's /metrics; ``service`` is the
  HTTP side and ``start_receiver``; ``desk`` (with ``desk_html``, ``csrf``) the pages for
  people, whose actions ``actions`` shares with the API; ``commands`` the CLI.

The lab's receiver configuration and the receiver's test helpers live in the lab package
(``vmm_cert_lab.receiver_config``, ``vmm_cert_lab.receiver_testing``).

docs/renewal.md explains the safety model.
"""
