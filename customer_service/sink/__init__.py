"""`customer-service sink`: the Kafka consumer that delivers `customer-events` to the CRM
`CRM_CONNECTOR` names (README, "Kafka sink").

- `events`: the customer events read, and the status events written (pure);
- `backlog`: what was read and not yet settled, what to send next, what to commit (pure);
- `models` and `ledger`: per customer, the newest event settled and the CRM id (the
  `sink_customers` table of the service's database);
- `runner`: the consumer loop (poll, send, settle, commit) and its Kafka clients.
"""
