-- What a step produced, in a line or a few (gantry_core::StepOutcome::summary): the digest a
-- kaniko step pushed, a trivy scan's findings, the commit a gitops step pushed. NULL for the
-- steps of databases migrated from 0002 and for steps that produced nothing to show. The store
-- keeps at most SUMMARY_MAX_BYTES of it (cut with a marker).
ALTER TABLE steps ADD COLUMN summary TEXT;
