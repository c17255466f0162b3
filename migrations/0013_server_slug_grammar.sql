-- One server-slug grammar for the drain and the DeletionRequest CRD
-- (src/archive/key.rs, is_server_slug): 1 to 512 characters, none of them
-- ':' or a control character (Unicode Cc: U+0000-U+001F, U+007F-U+009F).
-- A reject whose server segment is outside it belongs to its tenant only,
-- as the drain now attributes it: a whole-tenant erasure finds it, and no
-- server erasure could name it. (NUL cannot be in a text column, and
-- split_part never returns ':'.)
UPDATE probe_minute_rejects
SET server_slug = NULL
WHERE server_slug IS NOT NULL
  AND (server_slug ~ '[\x01-\x1f\x7f-\x9f]' OR char_length(server_slug) > 512);
