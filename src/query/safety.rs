//! Only statements that read: the parsed statement is checked before it is
//! planned (so a refused statement never touches a file, not even to infer
//! a schema), and the plan is checked again with DataFusion's `SQLOptions`
//! (no DDL, DML or session statements anywhere, subqueries included).
//!
//! Accepted: `SELECT` / `WITH` / `VALUES` queries, `EXPLAIN [ANALYZE]` of
//! one, `DESCRIBE <table>`, `SHOW TABLES` and `SHOW COLUMNS`. Reading files
//! by path (`SELECT * FROM '/etc/passwd'`) is not possible: URL tables are
//! not enabled, and no file-reading table function is registered.

use datafusion::sql::parser::Statement as DfStatement;
use datafusion::sql::sqlparser::ast::Statement as SqlStatement;

use super::QueryError;

/// Refuses anything but a read.
pub fn check_statement(statement: &DfStatement) -> Result<(), QueryError> {
    match statement {
        DfStatement::Statement(inner) => check_sql_statement(inner),
        DfStatement::Explain(explain) => check_statement(&explain.statement),
        DfStatement::CreateExternalTable(_) => Err(refused(
            "CREATE EXTERNAL TABLE",
            "tables cannot be created, and no file outside stepstore's tables can be read",
        )),
        DfStatement::CopyTo(_) => Err(refused("COPY", "nothing can be written to files")),
        DfStatement::Reset(_) => Err(refused("RESET", "session settings cannot be changed")),
    }
}

fn check_sql_statement(statement: &SqlStatement) -> Result<(), QueryError> {
    match statement {
        SqlStatement::Query(_)
        | SqlStatement::ExplainTable { .. }
        | SqlStatement::ShowTables { .. }
        | SqlStatement::ShowColumns { .. } => Ok(()),
        SqlStatement::Explain { statement, .. } => check_sql_statement(statement),
        SqlStatement::Set(_) => Err(refused("SET", "session settings cannot be changed")),
        SqlStatement::Copy { .. } => Err(refused("COPY", "nothing can be written to files")),
        SqlStatement::Insert(_)
        | SqlStatement::Update(_)
        | SqlStatement::Delete(_)
        | SqlStatement::Merge(_)
        | SqlStatement::Truncate(_) => Err(refused(
            &statement_kind(statement),
            "stepstore's tables are read-only; write through the API",
        )),
        other => Err(refused(
            &statement_kind(other),
            "only queries that read (SELECT, WITH, EXPLAIN, DESCRIBE, SHOW TABLES) are allowed",
        )),
    }
}

/// The leading keywords of a statement, for messages.
fn statement_kind(statement: &SqlStatement) -> String {
    let text = statement.to_string();
    let words: Vec<&str> = text
        .split_whitespace()
        .take_while(|word| word.chars().all(|c| c.is_ascii_alphabetic() || c == '_'))
        .take(3)
        .collect();
    if words.is_empty() {
        "this statement".to_string()
    } else {
        words.join(" ").to_ascii_uppercase()
    }
}

fn refused(kind: &str, why: &str) -> QueryError {
    QueryError::Refused(format!("{kind} is not allowed: {why}"))
}

/// The message for a plan that DataFusion's `SQLOptions` check refused
/// (DDL, DML or a statement hidden in a subquery).
pub fn refusal_message(datafusion_message: &str) -> String {
    format!("statement not allowed: only queries that read are accepted ({datafusion_message})")
}

#[cfg(test)]
mod tests {
    use super::*;
    use datafusion::sql::parser::DFParser;

    fn check(sql: &str) -> Result<(), QueryError> {
        let mut statements = DFParser::parse_sql(sql).unwrap();
        assert_eq!(statements.len(), 1);
        check_statement(&statements.pop_front().unwrap())
    }

    #[test]
    fn reads_pass_and_everything_else_is_refused() {
        for sql in [
            "SELECT 1",
            "WITH a AS (SELECT 1 AS x) SELECT x FROM a",
            "EXPLAIN SELECT * FROM metrics WHERE key = 'loss'",
            "EXPLAIN ANALYZE SELECT count(*) FROM metrics",
            "DESCRIBE metrics",
            "SHOW TABLES",
            "VALUES (1), (2)",
        ] {
            assert!(check(sql).is_ok(), "{sql} should pass");
        }
        for (sql, needle) in [
            (
                "CREATE EXTERNAL TABLE p STORED AS CSV LOCATION '/etc/passwd'",
                "CREATE EXTERNAL TABLE",
            ),
            ("COPY (SELECT 1) TO '/tmp/x.csv'", "COPY"),
            ("COPY metrics TO '/tmp/x.parquet'", "COPY"),
            ("EXPLAIN COPY (SELECT 1) TO '/tmp/x.csv'", "COPY"),
            ("CREATE TABLE t (x INT)", "CREATE TABLE"),
            ("CREATE VIEW v AS SELECT 1", "CREATE VIEW"),
            ("DROP TABLE metrics", "DROP TABLE"),
            ("INSERT INTO metrics VALUES (1)", "INSERT INTO"),
            ("DELETE FROM runs", "DELETE FROM"),
            ("UPDATE runs SET status = 'x'", "UPDATE"),
            ("SET datafusion.execution.batch_size = 1", "SET"),
            ("RESET datafusion.execution.batch_size", "RESET"),
            ("EXPLAIN CREATE TABLE t AS SELECT 1", "CREATE TABLE"),
        ] {
            match check(sql) {
                Err(QueryError::Refused(message)) => {
                    assert!(message.contains(needle), "{sql}: {message}");
                }
                other => panic!("{sql} should be refused, got {other:?}"),
            }
        }
    }
}
