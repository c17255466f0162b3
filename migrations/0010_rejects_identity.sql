-- Rejects are data of the tenant and server their key names (DESIGN §9,
-- identity). The drain fills these columns from the key with the same
-- reading it uses for rows (src/archive/key.rs); erasure, verification and
-- tombstone replay select rejects by them, never by a pattern on the key
-- text (a pattern only finds the spellings it was written for).
ALTER TABLE probe_minute_rejects
    ADD COLUMN tenant_id   uuid NULL,
    ADD COLUMN server_slug text NULL;

-- Existing rejects, read from their key text as src/archive/key.rs reads a
-- key: `verdict:{tenant}[:{server}[:...]]`, the tenant hyphenated, simple
-- (32 hex digits) or braced, in any case; the server is the next segment
-- when it is not empty. The regular expression admits exactly those three
-- spellings before the cast (PostgreSQL's uuid input would also take
-- other groupings, which the drain never attributes).
UPDATE probe_minute_rejects
SET tenant_id = split_part(verdict_key, ':', 2)::uuid,
    server_slug = nullif(split_part(verdict_key, ':', 3), '')
WHERE split_part(verdict_key, ':', 1) = 'verdict'
  AND position(':' IN verdict_key) > 0
  AND split_part(verdict_key, ':', 2) ~
      '^([0-9A-Fa-f]{8}-[0-9A-Fa-f]{4}-[0-9A-Fa-f]{4}-[0-9A-Fa-f]{4}-[0-9A-Fa-f]{12}|[0-9A-Fa-f]{32}|\{[0-9A-Fa-f]{8}-[0-9A-Fa-f]{4}-[0-9A-Fa-f]{4}-[0-9A-Fa-f]{4}-[0-9A-Fa-f]{12}\})$';

-- Serves the erasure, its verification and the replay of one server or
-- one whole tenant.
CREATE INDEX probe_minute_rejects_by_owner
    ON probe_minute_rejects (tenant_id, server_slug)
    WHERE tenant_id IS NOT NULL;
