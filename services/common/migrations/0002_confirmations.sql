-- Confirmer: when the deadline sweeper first saw a request past its due time.
-- (Overdue itself is "state <> 'CONFIRMED' AND due_at < now"; overdue_at records
-- when it was noticed, so each request is reported as newly overdue once.)

ALTER TABLE requests ADD COLUMN overdue_at timestamptz;

-- Requests past due that the sweeper has not marked yet.
CREATE INDEX requests_unmarked_open_by_due ON requests (due_at)
    WHERE state <> 'CONFIRMED' AND overdue_at IS NULL;

-- Needs-attention listing and gauge.
CREATE INDEX requests_needing_attention ON requests (due_at) WHERE state = 'NEEDS_ATTENTION';
