"""The transports a delivery goes out on: peers behind one seam, `delivery.Sender`.

`http` calls the CRM's REST API; `kafka` publishes the request as an event for the
CRM's consumer. The delivery engine (claims, order, retries, dead requests) does not
know which one runs: each turns one outbox row into an `Outcome` and never raises.
"""
