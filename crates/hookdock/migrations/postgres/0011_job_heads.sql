-- The head of each (handler, ordering key) is the one job of the key that may run; the jobs
-- queued behind it are `blocked` until it is done or dead. Claims then read an index of the
-- heads alone (one entry per busy key) instead of grouping every unfinished job on each claim,
-- which cost a walk of the whole backlog behind a busy key.
ALTER TABLE jobs ADD COLUMN blocked BIGINT NOT NULL DEFAULT 0;
UPDATE jobs SET blocked = 1
WHERE status IN ('pending', 'failed', 'processing')
  AND EXISTS (
      SELECT 1 FROM jobs e
      WHERE e.handler = jobs.handler AND e.ordering_key = jobs.ordering_key
        AND e.status IN ('pending', 'failed', 'processing') AND e.id < jobs.id
  );
CREATE INDEX jobs_heads ON jobs (id) WHERE blocked = 0 AND status IN ('pending', 'failed', 'processing');
-- A key's head, found without walking the jobs queued behind it.
CREATE INDEX jobs_head_keys ON jobs (handler, ordering_key) WHERE blocked = 0 AND status IN ('pending', 'failed', 'processing');
-- Counting unfinished jobs uses jobs_ordering, which has the same condition.
DROP INDEX jobs_ready;
