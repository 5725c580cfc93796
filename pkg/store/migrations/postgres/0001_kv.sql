-- Records: key -> (value, version) per table. Keys are UTF-8 stored as bytea so that
-- ordering is bytewise whatever the database collation.
CREATE TABLE kv (
    tbl     TEXT   NOT NULL,
    key     BYTEA  NOT NULL,
    value   BYTEA  NOT NULL,
    version BIGINT NOT NULL,
    PRIMARY KEY (tbl, key)
);

-- Secondary index entries: (index, index key) -> owning record.
CREATE TABLE kv_index (
    idx  TEXT    NOT NULL,
    ikey BYTEA   NOT NULL,
    tbl  TEXT    NOT NULL,
    pkey BYTEA   NOT NULL,
    uniq BOOLEAN NOT NULL,
    PRIMARY KEY (idx, ikey, tbl, pkey)
);

-- Unique indexes hold one owner per index key, whatever the table.
CREATE UNIQUE INDEX kv_index_unique ON kv_index (idx, ikey) WHERE uniq;
-- To find and replace a record's entries.
CREATE INDEX kv_index_owner ON kv_index (tbl, pkey);
