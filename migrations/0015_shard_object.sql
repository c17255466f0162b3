-- Which ArchiverShard (`namespace/name`) a watermark row belongs to, so an
-- operator that watches one namespace retires only the rows of its own
-- namespace when their shard is gone: shard ids are unique per database,
-- and operators watching other namespaces may share it. Set by the worker
-- when it creates the row and by the ArchiverShard controller on every
-- reconcile; NULL for rows written before this migration until their
-- shard next reconciles (a namespaced operator never retires such a row).
ALTER TABLE archive_watermark
    ADD COLUMN shard_object       text         NULL;
