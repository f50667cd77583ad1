//! Reads a migrated database's own catalog (SQLite's pragmas, PostgreSQL's `pg_catalog` and
//! `information_schema`) into the same plain lines, so a test can assert that the two
//! migration sets define the same tables, columns, types, nullability, foreign keys and
//! indexes: queries are written once for both engines, so the schemas must not drift.
//!
//! Types are compared by their declared name, lowercased: both migration sets spell integers
//! `INTEGER`/`BIGINT` and strings `TEXT`, which keeps sqlx's `Any` decoding identical.

use easel_server::storage::db::{Db, Engine};
use sqlx::Row;

const SQLITE_COLUMNS: &str = "SELECT m.name AS tbl, p.name AS col, lower(p.type) AS ty, \
     CASE WHEN p.\"notnull\" = 0 AND p.pk = 0 THEN 1 ELSE 0 END AS nullable \
     FROM sqlite_master m, pragma_table_info(m.name) p \
     WHERE m.type = 'table' AND m.name NOT LIKE 'sqlite%' AND m.name <> '_sqlx_migrations'";

const POSTGRES_COLUMNS: &str = "SELECT c.table_name::text AS tbl, c.column_name::text AS col, \
     c.data_type::text AS ty, CASE WHEN c.is_nullable = 'YES' THEN 1 ELSE 0 END AS nullable \
     FROM information_schema.columns c \
     WHERE c.table_schema = current_schema() AND c.table_name <> '_sqlx_migrations'";

const SQLITE_PRIMARY_KEYS: &str = "SELECT m.name AS tbl, p.name AS col \
     FROM sqlite_master m, pragma_table_info(m.name) p \
     WHERE m.type = 'table' AND p.pk > 0 AND m.name NOT LIKE 'sqlite%' AND m.name <> '_sqlx_migrations'";

const POSTGRES_PRIMARY_KEYS: &str = "SELECT t.relname::text AS tbl, a.attname::text AS col \
     FROM pg_index x JOIN pg_class t ON t.oid = x.indrelid \
     JOIN pg_attribute a ON a.attrelid = t.oid AND a.attnum = ANY (x.indkey::int2[]) \
     WHERE x.indisprimary AND t.relnamespace = current_schema()::regnamespace AND t.relname <> '_sqlx_migrations'";

const SQLITE_FOREIGN_KEYS: &str = "SELECT m.name AS tbl, f.\"from\" AS col, f.\"table\" AS ref_tbl, f.\"to\" AS ref_col \
     FROM sqlite_master m, pragma_foreign_key_list(m.name) f WHERE m.type = 'table'";

const POSTGRES_FOREIGN_KEYS: &str = "SELECT t.relname::text AS tbl, a.attname::text AS col, \
     r.relname::text AS ref_tbl, ra.attname::text AS ref_col \
     FROM pg_constraint k JOIN pg_class t ON t.oid = k.conrelid JOIN pg_class r ON r.oid = k.confrelid \
     JOIN pg_attribute a ON a.attrelid = k.conrelid AND a.attnum = k.conkey[1] \
     JOIN pg_attribute ra ON ra.attrelid = k.confrelid AND ra.attnum = k.confkey[1] \
     WHERE k.contype = 'f' AND t.relnamespace = current_schema()::regnamespace";

/// Indexes made by CREATE INDEX (not those behind primary keys or constraints), one row per
/// indexed column.
const SQLITE_INDEXES: &str = "SELECT m.name AS tbl, l.name AS idx, l.\"unique\" AS uniq, l.partial AS partial, \
     i.seqno AS pos, i.name AS col \
     FROM sqlite_master m, pragma_index_list(m.name) l, pragma_index_info(l.name) i \
     WHERE m.type = 'table' AND l.origin = 'c'";

const POSTGRES_INDEXES: &str = "SELECT t.relname::text AS tbl, i.relname::text AS idx, \
     CASE WHEN x.indisunique THEN 1 ELSE 0 END AS uniq, CASE WHEN x.indpred IS NULL THEN 0 ELSE 1 END AS partial, \
     (k.ord - 1)::bigint AS pos, a.attname::text AS col \
     FROM pg_index x JOIN pg_class i ON i.oid = x.indexrelid JOIN pg_class t ON t.oid = x.indrelid \
     CROSS JOIN LATERAL unnest(x.indkey::int2[]) WITH ORDINALITY AS k(attnum, ord) \
     JOIN pg_attribute a ON a.attrelid = t.oid AND a.attnum = k.attnum \
     WHERE t.relnamespace = current_schema()::regnamespace AND NOT x.indisprimary \
     AND NOT EXISTS (SELECT 1 FROM pg_constraint c WHERE c.conindid = x.indexrelid)";

/// The schema of `db` as sorted lines, e.g. `column usage.status integer not null`.
pub async fn describe(db: &Db, engine: Engine) -> Vec<String> {
    let pick = |sqlite, postgres| if engine == Engine::Sqlite { sqlite } else { postgres };
    let mut lines = Vec::new();
    for row in sqlx::query(pick(SQLITE_COLUMNS, POSTGRES_COLUMNS)).fetch_all(db).await.expect("columns") {
        let nullable = if int(&row, "nullable") == 1 { "null" } else { "not null" };
        lines.push(format!("column {}.{} {} {nullable}", text(&row, "tbl"), text(&row, "col"), text(&row, "ty")));
    }
    for row in sqlx::query(pick(SQLITE_PRIMARY_KEYS, POSTGRES_PRIMARY_KEYS)).fetch_all(db).await.expect("keys") {
        lines.push(format!("primary key {}.{}", text(&row, "tbl"), text(&row, "col")));
    }
    for row in sqlx::query(pick(SQLITE_FOREIGN_KEYS, POSTGRES_FOREIGN_KEYS)).fetch_all(db).await.expect("fks") {
        let (tbl, col, ref_tbl, ref_col) =
            (text(&row, "tbl"), text(&row, "col"), text(&row, "ref_tbl"), text(&row, "ref_col"));
        lines.push(format!("foreign key {tbl}.{col} -> {ref_tbl}.{ref_col}"));
    }
    for row in sqlx::query(pick(SQLITE_INDEXES, POSTGRES_INDEXES)).fetch_all(db).await.expect("indexes") {
        let unique = if int(&row, "uniq") == 1 { "unique " } else { "" };
        let partial = if int(&row, "partial") == 1 { " (partial)" } else { "" };
        let (tbl, idx, pos, col) = (text(&row, "tbl"), text(&row, "idx"), int(&row, "pos"), text(&row, "col"));
        lines.push(format!("{unique}index {idx} on {tbl}: column {pos} = {col}{partial}"));
    }
    lines.sort();
    lines
}

fn text(row: &sqlx::any::AnyRow, column: &str) -> String {
    row.try_get(column).unwrap_or_else(|e| panic!("{column}: {e}"))
}

fn int(row: &sqlx::any::AnyRow, column: &str) -> i64 {
    row.try_get(column).unwrap_or_else(|e| panic!("{column}: {e}"))
}
