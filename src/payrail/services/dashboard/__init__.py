"""The operator dashboard's use cases: browser sessions, the pages' data, kept reconciliations.

The HTML lives in api/dashboard.py and its templates; everything here returns plain data and
reuses the payouts, orders, callbacks, flags, reconcile and job-queue services.
"""
