"""Admission: whether a new call may start, decided in one place.

    ledger.py      who holds which call slot (limits.max_calls, limits.company_max_calls) and the
                   per-minute windows; `LedgerState` (the sync core), the async `AdmissionLedger`
                   the edge uses, `LocalLedger` (one process); a node keeps the state for its
                   workers (`mediaserver.node.ledger`)
    attempts.py    the sliding window of call attempts per company
    api_rate.py    the sliding window of tenant API requests per key
    load_gate.py   the load gate: closed while the event loop or the dispatcher lags

Light on purpose: the node imports the ledger without loading the call edge or any media code.
"""
