"""Tenants, their API keys, budgets, rate limits and the spend ledger, on the shared Store.

- :mod:`.model`: what an operator configures (tenants, keys, budgets, limits) as data;
- :mod:`.registry`: tenants and keys kept in the Store as one compare-and-set document, with
  the admin operations, and the cached view every gateway reads on the hot path;
- :mod:`.prices`: what a token costs on each pool;
- :mod:`.admission`: the counters one request touches — limits and budgets reserved in one
  atomic multi-add, settled with the ledger record in one atomic commit;
- :mod:`.ledger`: reading the spend ledger back (``fleetpilot spend``, the admin API).

The gateway's stages (:mod:`fleetpilot.gateway.stages.tenant`) are thin wrappers over these.
"""
