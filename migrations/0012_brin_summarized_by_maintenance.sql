-- probe_minute_brin_minute was created with autosummarize: every insert that
-- starts a new block range queues a summarization request for autovacuum,
-- and that queue (a few hundred entries per database) overflows when one
-- minute brings 250k rows. PostgreSQL then logs "request for BRIN range
-- summarization ... was not recorded" by the thousand, and those ranges stay
-- unsummarized (read by every query through the index) until a VACUUM.
--
-- The derived-views maintenance now summarizes the new ranges of the
-- partitions it is about to read, itself, every pass (src/archive/brin.rs).
-- PostgreSQL cannot change the options of a partitioned index, and
-- rebuilding it would read the whole history; so autosummarize is turned off
-- on the partitions' indexes here, and the maintenance turns it off on the
-- indexes of partitions created later (they copy the parent's options).
DO $$
DECLARE
    leaf regclass;
BEGIN
    FOR leaf IN
        SELECT relid FROM pg_partition_tree(to_regclass('probe_minute_brin_minute')) WHERE isleaf
    LOOP
        EXECUTE format('ALTER INDEX %s SET (autosummarize = off)', leaf);
    END LOOP;
END
$$;
