-- The mail house over SFTP (services/connectors/sftp_mail_house.py): one row per file
-- uploaded, written after the file was renamed into place. The sequence of the next file
-- is the larger of this table's and the server listing's highest, plus one, so it survives
-- restarts and never reuses a name. The file's commands are acknowledged only once its
-- receipt is read: receipt_status stays NULL until then ('matched' or 'mismatch' after).
-- No personal data here: ids, counts and a checksum of the file.

CREATE TABLE sftp_uploads (
    destination     text        NOT NULL,   -- the destination's name
    sequence        bigint      NOT NULL,
    name            text        NOT NULL,   -- file name in the remote folder
    remote_dir      text        NOT NULL,
    command_ids     text[]      NOT NULL,   -- in row order (row n carries command_ids[n])
    request_ids     text[]      NOT NULL,   -- request_ids[n] goes with command_ids[n]
    row_count       integer     NOT NULL,
    sha256          text        NOT NULL,   -- of the file's bytes as uploaded
    uploaded_at     timestamptz NOT NULL,
    receipt_status  text        CHECK (receipt_status IN ('matched', 'mismatch')),
    receipt_detail  text,                   -- why a receipt disagreed
    rejected_rows   jsonb,                  -- {"<row>": "<reason>"} from a matched receipt
    received_at     timestamptz,
    PRIMARY KEY (destination, sequence),
    UNIQUE (destination, name)
);

-- The files still waiting for their receipt, and the latest file of each command.
CREATE INDEX sftp_uploads_waiting ON sftp_uploads (destination) WHERE receipt_status IS NULL;
CREATE INDEX sftp_uploads_commands ON sftp_uploads USING gin (command_ids);
