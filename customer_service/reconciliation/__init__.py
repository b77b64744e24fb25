"""Reconciliation: compare every customer with the CRM's record, report and repair drift."""
