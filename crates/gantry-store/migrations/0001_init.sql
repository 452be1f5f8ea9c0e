-- Gantry's first schema. Portable between SQLite and PostgreSQL: timestamps are RFC 3339 text in
-- UTC with a fixed width (so they sort as text), JSON is text, flags are 0/1 integers.
-- `{{serial}}` becomes each database's auto-increment primary key.

CREATE TABLE deliveries (
    forge       TEXT NOT NULL,
    delivery_id TEXT NOT NULL,
    event       TEXT NOT NULL,
    received_at TEXT NOT NULL,
    payload     TEXT NOT NULL,
    -- received | planned | ignored | failed
    state       TEXT NOT NULL,
    reason      TEXT,
    -- JSON array of run ids
    run_ids     TEXT NOT NULL,
    PRIMARY KEY (forge, delivery_id)
);

CREATE TABLE runs (
    id               TEXT PRIMARY KEY,
    forge            TEXT NOT NULL,
    repo             TEXT NOT NULL,
    pipeline         TEXT NOT NULL,
    name             TEXT NOT NULL,
    event            TEXT NOT NULL,
    git_ref          TEXT NOT NULL,
    branch           TEXT,
    sha              TEXT NOT NULL,
    pr_number        BIGINT,
    -- JSON of gantry_core::Trigger
    trigger_json     TEXT NOT NULL,
    state            TEXT NOT NULL,
    reason           TEXT,
    cancel_requested BIGINT NOT NULL DEFAULT 0,
    created_at       TEXT NOT NULL,
    started_at       TEXT,
    finished_at      TEXT,
    updated_at       TEXT NOT NULL
);
CREATE INDEX runs_by_repo ON runs (forge, repo, created_at);
CREATE INDEX runs_by_state ON runs (state);

-- One row per attempt of a job; all attempts share the job id.
CREATE TABLE jobs (
    id               TEXT NOT NULL,
    attempt          BIGINT NOT NULL,
    run_id           TEXT NOT NULL REFERENCES runs (id),
    -- forge:owner/name, for the per-repository limit
    repo_key         TEXT NOT NULL,
    name             TEXT NOT NULL,
    -- the job's place in the plan's topological order
    position         BIGINT NOT NULL,
    is_latest        BIGINT NOT NULL,
    needs            TEXT NOT NULL,
    spec             TEXT NOT NULL,
    retries_left     BIGINT NOT NULL,
    allow_failure    BIGINT NOT NULL,
    run_if           TEXT NOT NULL,
    state            TEXT NOT NULL,
    reason           TEXT,
    created_at       TEXT NOT NULL,
    queued_at        TEXT,
    started_at       TEXT,
    finished_at      TEXT,
    updated_at       TEXT NOT NULL,
    PRIMARY KEY (id, attempt)
);
CREATE INDEX jobs_by_run ON jobs (run_id);
CREATE INDEX jobs_by_state ON jobs (state);

CREATE TABLE steps (
    job_id      TEXT NOT NULL,
    attempt     BIGINT NOT NULL,
    idx         BIGINT NOT NULL,
    run_id      TEXT NOT NULL,
    name        TEXT NOT NULL,
    state       TEXT NOT NULL,
    exit_code   BIGINT,
    reason      TEXT,
    started_at  TEXT,
    finished_at TEXT,
    PRIMARY KEY (job_id, attempt, idx)
);
CREATE INDEX steps_by_run ON steps (run_id);

-- Jobs whose needs are met and that wait for a slot, first in first out by seq.
CREATE TABLE queue (
    seq         {{serial}},
    job_id      TEXT NOT NULL,
    attempt     BIGINT NOT NULL,
    run_id      TEXT NOT NULL,
    repo_key    TEXT NOT NULL,
    enqueued_at TEXT NOT NULL,
    UNIQUE (job_id, attempt)
);

CREATE TABLE status_outbox (
    id              {{serial}},
    forge           TEXT NOT NULL,
    -- JSON of gantry_core::RepoRef
    repo            TEXT NOT NULL,
    sha             TEXT NOT NULL,
    context         TEXT NOT NULL,
    state           TEXT NOT NULL,
    description     TEXT NOT NULL,
    target_url      TEXT,
    created_at      TEXT NOT NULL,
    attempts        BIGINT NOT NULL DEFAULT 0,
    next_attempt_at TEXT NOT NULL,
    delivered_at    TEXT,
    -- NULL while pending; then delivered | coalesced | dropped
    outcome         TEXT,
    last_error      TEXT
);
CREATE INDEX status_outbox_pending ON status_outbox (outcome, id);
