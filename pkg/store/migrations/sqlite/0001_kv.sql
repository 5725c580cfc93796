-- Records: key -> (value, version) per table. Keys are UTF-8 bound as BLOBs so that
-- comparisons are bytewise, the same as PostgreSQL's bytea.
CREATE TABLE kv (
    tbl     TEXT    NOT NULL,
    key     BLOB    NOT NULL,
    value   BLOB    NOT NULL,
    version INTEGER NOT NULL,
    PRIMARY KEY (tbl, key)
) WITHOUT ROWID;

-- Secondary index entries: (index, index key) -> owning record.
CREATE TABLE kv_index (
    idx  TEXT    NOT NULL,
    ikey BLOB    NOT NULL,
    tbl  TEXT    NOT NULL,
    pkey BLOB    NOT NULL,
    uniq INTEGER NOT NULL,
    PRIMARY KEY (idx, ikey, tbl, pkey)
) WITHOUT ROWID;

-- Unique indexes hold one owner per index key, whatever the table.
CREATE UNIQUE INDEX kv_index_unique ON kv_index (idx, ikey) WHERE uniq = 1;
-- To find and replace a record's entries.
CREATE INDEX kv_index_owner ON kv_index (tbl, pkey);
