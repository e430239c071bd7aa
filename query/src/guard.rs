//! The read-only gate: which statements a session may run.
//!
//! Only queries, `EXPLAIN` of queries, and catalog browsing (`SHOW TABLES`,
//! `SHOW COLUMNS`, `DESCRIBE`) pass. DDL, DML, `COPY`, `CREATE EXTERNAL
//! TABLE`, `SET`/`RESET`, table functions other than the pure generators,
//! and table names that look like paths or URLs are refused with a message
//! that says why. The logical plan is checked once more with DataFusion's
//! own `SQLOptions` after planning (see [`crate::engine`]), so a statement
//! that slipped past this syntactic gate still cannot write or configure.

use std::ops::ControlFlow;

use deltalake::datafusion::sql::parser::{DFParser, Statement as DfStatement};
use deltalake::datafusion::sql::sqlparser::ast::{
    ObjectName, ObjectNamePart, Statement, TableFactor, Visit, Visitor,
};

use crate::error::{Error, Result};

/// Table functions that read nothing but their arguments.
const ALLOWED_TABLE_FUNCTIONS: [&str; 2] = ["generate_series", "range"];

/// Parses `sql` and checks that it is one read-only statement.
pub fn check(sql: &str) -> Result<DfStatement> {
    let mut statements = DFParser::parse_sql(sql).map_err(|e| Error::BadSql(e.strip_backtrace()))?;
    if statements.len() != 1 {
        return Err(if statements.is_empty() {
            Error::BadSql("empty statement".into())
        } else {
            Error::Forbidden("one statement per request".into())
        });
    }
    let statement = statements.pop_front().expect("one statement");
    check_statement(&statement)?;
    Ok(statement)
}

fn check_statement(statement: &DfStatement) -> Result<()> {
    match statement {
        DfStatement::Statement(s) => check_sql_statement(s),
        DfStatement::Explain(e) => check_statement(&e.statement),
        DfStatement::CreateExternalTable(_) => {
            Err(Error::Forbidden("CREATE EXTERNAL TABLE is not allowed: the service is read-only".into()))
        }
        DfStatement::CopyTo(_) => Err(Error::Forbidden("COPY is not allowed: the service is read-only".into())),
        DfStatement::Reset(_) => Err(Error::Forbidden("RESET of engine options is not allowed".into())),
    }
}

fn check_sql_statement(s: &Statement) -> Result<()> {
    match s {
        Statement::Query(_)
        | Statement::ShowTables { .. }
        | Statement::ShowColumns { .. }
        | Statement::ExplainTable { .. } => {}
        Statement::Explain { statement, .. } => check_sql_statement(statement)?,
        Statement::Set(_) | Statement::ShowVariable { .. } => {
            return Err(Error::Forbidden("SET and SHOW of engine options are not allowed".into()));
        }
        Statement::Copy { .. } => {
            return Err(Error::Forbidden("COPY is not allowed: the service is read-only".into()));
        }
        Statement::Insert(_) | Statement::Update { .. } | Statement::Delete(_) | Statement::Merge { .. } => {
            return Err(Error::Forbidden(format!(
                "{} is not allowed: the service is read-only",
                keyword(s)
            )));
        }
        other => {
            return Err(Error::Forbidden(format!(
                "{} is not allowed: only queries (SELECT, WITH, EXPLAIN, SHOW TABLES, DESCRIBE) are accepted",
                keyword(other)
            )));
        }
    }
    let mut v = RelationCheck::default();
    let _ = s.visit(&mut v);
    v.result
}

/// The first words of a statement, for error messages.
fn keyword(s: &Statement) -> String {
    let text = s.to_string();
    let words: Vec<&str> = text.split_whitespace().take(2).collect();
    match words.as_slice() {
        [first, second] if ["CREATE", "DROP", "ALTER"].contains(first) => format!("{first} {second}"),
        [first, ..] => (*first).to_owned(),
        [] => "this statement".to_owned(),
    }
}

struct RelationCheck {
    result: Result<()>,
}

impl Default for RelationCheck {
    fn default() -> Self {
        RelationCheck { result: Ok(()) }
    }
}

impl RelationCheck {
    fn fail(&mut self, e: Error) -> ControlFlow<()> {
        self.result = Err(e);
        ControlFlow::Break(())
    }
}

fn looks_like_path(name: &ObjectName) -> bool {
    name.0.iter().any(|part| match part {
        ObjectNamePart::Identifier(id) => {
            id.quote_style == Some('\'')
                || id.value.contains('/')
                || id.value.contains('\\')
                || id.value.contains("://")
                || id.value.ends_with(".parquet")
                || id.value.ends_with(".csv")
                || id.value.ends_with(".json")
        }
        ObjectNamePart::Function(_) => true,
    })
}

impl Visitor for RelationCheck {
    type Break = ();

    /// Statements nest: a query body may be an INSERT, UPDATE, DELETE or
    /// MERGE (`WITH x AS (…) INSERT …`, `… IN (DELETE …)`), so the kind
    /// check of [`check_sql_statement`] holds at every level.
    fn pre_visit_statement(&mut self, s: &Statement) -> ControlFlow<()> {
        match s {
            Statement::Query(_)
            | Statement::ShowTables { .. }
            | Statement::ShowColumns { .. }
            | Statement::ExplainTable { .. }
            | Statement::Explain { .. } => ControlFlow::Continue(()),
            other => self.fail(Error::Forbidden(format!("{} is not allowed: the service is read-only", keyword(other)))),
        }
    }

    fn pre_visit_table_factor(&mut self, factor: &TableFactor) -> ControlFlow<()> {
        match factor {
            TableFactor::Table { name, args: Some(_), .. } => {
                let f = name.to_string().to_ascii_lowercase();
                if !ALLOWED_TABLE_FUNCTIONS.contains(&f.as_str()) {
                    return self.fail(Error::Forbidden(format!(
                        "table function {f} is not allowed (allowed: {})",
                        ALLOWED_TABLE_FUNCTIONS.join(", ")
                    )));
                }
            }
            TableFactor::TableFunction { .. } | TableFactor::Function { .. } | TableFactor::OpenJsonTable { .. } => {
                return self.fail(Error::Forbidden("table functions that read data are not allowed".into()));
            }
            _ => {}
        }
        ControlFlow::Continue(())
    }

    fn pre_visit_relation(&mut self, relation: &ObjectName) -> ControlFlow<()> {
        if looks_like_path(relation) {
            return self.fail(Error::Forbidden(
                "reading files or URLs directly is not allowed; query the estate tables".into(),
            ));
        }
        ControlFlow::Continue(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn refused(sql: &str) -> String {
        match check(sql) {
            Err(Error::Forbidden(m)) => m,
            Err(other) => panic!("{sql}: expected 403, got {other:?}"),
            Ok(_) => panic!("{sql}: expected 403, passed"),
        }
    }

    #[test]
    fn queries_pass() {
        for sql in [
            "SELECT 1",
            "select count(*) from events where tenant = 'acme'",
            "WITH x AS (SELECT * FROM events) SELECT * FROM x UNION ALL SELECT * FROM x",
            "EXPLAIN SELECT * FROM events",
            "EXPLAIN ANALYZE SELECT count(*) FROM events",
            "SHOW TABLES",
            "SHOW COLUMNS FROM events",
            "DESCRIBE events",
            "SELECT * FROM generate_series(1, 3)",
            "SELECT * FROM information_schema.tables",
        ] {
            check(sql).unwrap_or_else(|e| panic!("{sql}: {e}"));
        }
    }

    #[test]
    fn writes_and_files_are_refused() {
        assert!(refused("INSERT INTO events VALUES (1)").contains("INSERT"));
        assert!(refused("DELETE FROM events").contains("DELETE"));
        assert!(refused("UPDATE events SET node = 'x'").contains("UPDATE"));
        assert!(refused("CREATE TABLE t AS SELECT 1").contains("CREATE TABLE"));
        assert!(refused("CREATE VIEW v AS SELECT 1").contains("CREATE VIEW"));
        assert!(refused("DROP TABLE events").contains("DROP TABLE"));
        assert!(refused("CREATE EXTERNAL TABLE x STORED AS PARQUET LOCATION '/tmp/x'").contains("EXTERNAL"));
        assert!(refused("COPY events TO '/tmp/out.parquet'").contains("COPY"));
        assert!(refused("COPY (SELECT 1) TO '/tmp/out.csv'").contains("COPY"));
        assert!(refused("SET datafusion.execution.batch_size = 1").contains("SET"));
        assert!(refused("SHOW datafusion.execution.batch_size").contains("SHOW"));
        assert!(refused("SELECT * FROM '/etc/passwd'").contains("files"));
        assert!(refused("SELECT * FROM 'file:///data/events'").contains("files"));
        assert!(refused("SELECT * FROM \"s3://bucket/x.parquet\"").contains("files"));
        assert!(refused("SELECT * FROM read_parquet('/tmp/x.parquet')").contains("read_parquet"));
        assert!(refused("SELECT * FROM events WHERE node IN (SELECT * FROM read_csv('/etc/passwd'))").contains("read_csv"));
        assert!(refused("EXPLAIN COPY events TO '/tmp/x'").contains("COPY"));
        assert!(refused("SELECT 1; DROP TABLE events").contains("one statement"));
        // Found by fuzz_guard: DML nested in a query body.
        assert!(refused("SELECT * FROM events WHERE node IN (DELETE FROM M read_csv('/etc/passwd'))").contains("DELETE"));
        assert!(refused("WITH x AS (SELECT 1) INSERT INTO events SELECT * FROM x").contains("INSERT"));
        assert!(matches!(check("SELEC 1"), Err(Error::BadSql(_))));
    }
}

#[cfg(test)]
#[path = "guard_fuzz.rs"]
mod fuzz;
