"""A stand-in for a third-party CRM: its customer API, fault switches and a request log."""
