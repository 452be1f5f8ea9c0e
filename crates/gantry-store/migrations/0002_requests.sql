-- Cancels and retries asked for on a replica that does not run the engine (with leader
-- election, every replica serves the API but only the leader schedules): the engine applies
-- them at its next tick and then deletes them, so a crash in between only applies one twice.
CREATE TABLE engine_requests (
    seq          {{serial}},
    -- cancel_run, cancel_job, retry_run, retry_job
    action       TEXT NOT NULL,
    -- the run's or the job's id
    target       TEXT NOT NULL,
    -- why, for a cancel ("cancelled by hand", "superseded by run …")
    reason       TEXT,
    requested_at TEXT NOT NULL
);
