"""teachloop.market (layer L3): listings, offers, orders, entitlements, royalties, downloads.

- ``listings``: a seller's listing of a version it owns; publishing pins the digest and
  computes the card, the effective licence (``catalog.licences``) and Croissant JSON-LD.
- ``offers``: prices per licence, row, training use or environment run, refused when they grant
  more than the effective licence.
- ``orders``: deposits through a ``ChargeProvider`` (``TestCharges``), purchases from the
  buyer's balance through ``ledger.Ledger``, refunds while the refund window is open.
- ``entitlements``: granted by a purchase, checked (``require``), metered and logged at every use;
  usage pricing billed from the meter.
- ``royalties``: the largest-remainder split by lineage, pending -> payable, payout batches.
- ``downloads``: expiring HMAC-signed links, OpenAI JSONL / DPO / parquet / HF formats.

It sits over ``catalog``, ``ledger`` and ``store`` and never imports ``loop``, ``train``,
``serve`` or ``work``; its HTTP routes live in ``app/routes/market.py``. ``docs/market.md``.
"""
