-- Run retention (Store::prune) finds finished runs by when they ended and settled deliveries
-- and statuses by when they arrived, once a minute: without these it read every row each time.
CREATE INDEX runs_by_finished ON runs (finished_at);
CREATE INDEX deliveries_by_received ON deliveries (received_at);
CREATE INDEX status_outbox_by_created ON status_outbox (created_at);
