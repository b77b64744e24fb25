"""`sink_customers`: what `customer-service sink` settled last for each customer.

One row per customer the sink delivered to (or dead-lettered for): the rank of the newest
event settled (`events.rank_of`: its version, a DELETE after the write of its version),
that event's id and status (`applied` or `dead`, with the error), and the customer's CRM
id as the CRM last gave it. Every sink process of the group shares it (the service's
database), so:

- an event read again (a sink killed before its commit, a rebalance, a publish repeated
  with the same eventId) is recognised: never sent twice, its status published again;
- an event older than one settled is never sent over it;
- updates and deletes go to the CRM id learnt, without a lookup by our id.
"""

from datetime import datetime

from sqlalchemy import Integer, String, Text
from sqlalchemy.orm import Mapped, mapped_column

from customer_service.columns import UTCDateTime, utc_now
from customer_service.db import Base


class SinkCustomer(Base):
    __tablename__ = "sink_customers"

    customer_id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=False)
    event_rank: Mapped[int] = mapped_column(Integer)
    event_id: Mapped[str] = mapped_column(String(255))
    status: Mapped[str] = mapped_column(String(10))
    crm_id: Mapped[str | None] = mapped_column(String(100))
    error: Mapped[str | None] = mapped_column(Text)
    updated_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utc_now)
