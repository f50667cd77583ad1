-- SQLite's 0004 stores the ledger's tables in their id order (WITHOUT ROWID). PostgreSQL has no
-- rowids: its tables are heaps with the primary key's index beside them, as before. Nothing to
-- change; the step exists so both engines keep the same migration steps.
SELECT 1;
