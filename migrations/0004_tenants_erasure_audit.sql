-- Written by billing, read by the operator: the tier in force at a minute
-- decides that minute's retention.
CREATE TABLE tenant_tier_history (
    tenant_id                      uuid         NOT NULL,
    tier                           text         NOT NULL CHECK (tier IN ('public','author','team','enterprise')),
    valid_from                     timestamptz  NOT NULL,
    valid_to                       timestamptz  NULL,
    contract_minute_retention_days integer      NULL
        CHECK (contract_minute_retention_days IS NULL
               OR (tier = 'enterprise' AND contract_minute_retention_days BETWEEN 1 AND 730)),
    CHECK (valid_to IS NULL OR valid_to > valid_from),
    PRIMARY KEY (tenant_id, valid_from)
);

-- Tombstones: written first in every erasure, replayed after a restore.
-- server_slug NULL means the whole tenant.
CREATE TABLE data_deletion_log (
    id                bigserial    PRIMARY KEY,
    tenant_id         uuid         NOT NULL,
    server_slug       text         NULL,
    deleted_at        timestamptz  NOT NULL DEFAULT now(),
    reason            text         NOT NULL CHECK (reason IN ('gdpr-art17','tenant-churned','manual-cleanup','drill')),
    requester         uuid         NOT NULL,
    request_namespace text         NULL,
    request_name      text         NULL,
    receipt_sha256    text         NULL
);
CREATE INDEX data_deletion_log_pair ON data_deletion_log (tenant_id, server_slug);

-- Every action the operator takes on data, with its payload.
CREATE TABLE operator_audit_log (
    id       bigserial    PRIMARY KEY,
    at       timestamptz  NOT NULL DEFAULT now(),
    action   text         NOT NULL,
    subject  text         NOT NULL,
    actor    text         NOT NULL,
    payload  jsonb        NOT NULL DEFAULT '{}'::jsonb
);
CREATE INDEX operator_audit_log_by_action ON operator_audit_log (action, at);
CREATE INDEX operator_audit_log_by_subject ON operator_audit_log (subject, at);
