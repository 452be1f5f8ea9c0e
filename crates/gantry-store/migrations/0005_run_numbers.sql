-- Runs are numbered per repository (#1, #2, …), as people name them. The counter is a row per
-- repository, bumped in the transaction that records the run. Existing runs are numbered in the
-- order they were created (ids are time-ordered); runs retention already deleted are not
-- counted.
ALTER TABLE runs ADD COLUMN number BIGINT NOT NULL DEFAULT 0;
UPDATE runs SET number = (
    SELECT COUNT(*) FROM runs AS older
    WHERE older.forge = runs.forge AND older.repo = runs.repo AND older.id <= runs.id
);
CREATE TABLE run_numbers (
    forge TEXT NOT NULL,
    repo TEXT NOT NULL,
    last BIGINT NOT NULL,
    PRIMARY KEY (forge, repo)
);
INSERT INTO run_numbers (forge, repo, last)
    SELECT forge, repo, MAX(number) FROM runs GROUP BY forge, repo;
