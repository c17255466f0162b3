-- Which incarnation of a DeletionRequest wrote a tombstone. Namespace and
-- name are reused when an object is deleted and applied again; the uid is
-- not. The erasure looks its own tombstones up by all three, so a request
-- whose receipt is already written is never run twice, and a run that
-- committed but crashed before its receipt is folded into the next one.
ALTER TABLE data_deletion_log ADD COLUMN request_uid text NULL;
CREATE INDEX data_deletion_log_request
    ON data_deletion_log (request_namespace, request_name);
