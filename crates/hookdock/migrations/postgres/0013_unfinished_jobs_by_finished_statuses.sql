-- The partial indexes on unfinished jobs name the two finished statuses instead of the three
-- unfinished ones (a job's status is one of pending, processing, failed, done, dead). SQLite
-- evaluates each partial index's condition on every row a statement writes, and an `IN` list
-- of three or more values costs it a temporary B-tree per index and statement (two values are
-- compared directly): three for each insert into jobs, six for each update of a job. Queries
-- say the same condition (`store::jobs::UNFINISHED`) so that the indexes still serve them;
-- PostgreSQL has the same indexes so that one condition serves both.
DROP INDEX jobs_ordering;
DROP INDEX jobs_heads;
DROP INDEX jobs_head_keys;
CREATE INDEX jobs_ordering ON jobs (handler, ordering_key, id) WHERE status NOT IN ('done', 'dead');
CREATE INDEX jobs_heads ON jobs (id) WHERE blocked = 0 AND status NOT IN ('done', 'dead');
CREATE INDEX jobs_head_keys ON jobs (handler, ordering_key) WHERE blocked = 0 AND status NOT IN ('done', 'dead');
