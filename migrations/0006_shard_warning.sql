-- A warning from the last tick that does not hold the watermark, e.g. a
-- minute with far fewer keys than the one before (partial eviction?).
ALTER TABLE archive_watermark ADD COLUMN last_warning text NULL;
