//! Fuzz targets for the statement guard (harness: `estate_schemas::fuzz`).
//!
//! - `fuzz_guard`: mutations of allowed and forbidden statements and random
//!   token soup. [`check`] never panics, and whatever it accepts is one
//!   statement that an independent walk of DataFusion's parse tree finds
//!   read-only at every level (nested statements included), whose canonical
//!   text is not refused either.
//! - `fuzz_guard_variants`: harmless rewrites (letter case, whitespace,
//!   comments, a trailing `;`) of the seeds. A forbidden seed stays
//!   forbidden, an allowed one stays allowed.

use std::ops::ControlFlow;

use deltalake::datafusion::sql::parser::DFParser;
use deltalake::datafusion::sql::sqlparser::ast::{Statement, Visit, Visitor};

use super::*;
use estate_schemas::fuzz::{Mutator, Rng, run};

const ALLOWED: &[&str] = &[
    "SELECT 1",
    "select count(*) from events where tenant = 'acme'",
    "WITH x AS (SELECT * FROM events) SELECT * FROM x UNION ALL SELECT * FROM x",
    "EXPLAIN SELECT * FROM events",
    "EXPLAIN ANALYZE SELECT count(*) FROM events",
    "EXPLAIN VERBOSE SELECT node FROM events LIMIT 5",
    "SHOW TABLES",
    "SHOW COLUMNS FROM events",
    "DESCRIBE events",
    "SELECT * FROM generate_series(1, 3)",
    "SELECT * FROM range(10) r JOIN events e ON r.value = e.seq",
    "SELECT * FROM information_schema.tables",
    "SELECT node, max(level) OVER (PARTITION BY node ORDER BY time) FROM events WHERE details LIKE '%/etc/%'",
    "SELECT e.node FROM events e WHERE e.node IN (SELECT node FROM nodes) ORDER BY 1 DESC NULLS LAST",
    "SELECT \"node\", 'a;b' AS s FROM \"events\" -- comment; DROP TABLE events",
];

const FORBIDDEN: &[&str] = &[
    "INSERT INTO events VALUES (1)",
    "DELETE FROM events",
    "UPDATE events SET node = 'x'",
    "CREATE TABLE t AS SELECT 1",
    "CREATE VIEW v AS SELECT 1",
    "DROP TABLE events",
    "ALTER TABLE events ADD COLUMN x INT",
    "TRUNCATE TABLE events",
    "CREATE EXTERNAL TABLE x STORED AS PARQUET LOCATION '/tmp/x'",
    "COPY events TO '/tmp/out.parquet'",
    "COPY (SELECT 1) TO '/tmp/out.csv'",
    "SET datafusion.execution.batch_size = 1",
    "SHOW datafusion.execution.batch_size",
    "RESET datafusion.execution.batch_size",
    "SELECT * FROM '/etc/passwd'",
    "SELECT * FROM 'file:///data/events'",
    "SELECT * FROM \"s3://bucket/x.parquet\"",
    "SELECT * FROM events JOIN \"x.csv\" ON true",
    "SELECT * FROM read_parquet('/tmp/x.parquet')",
    "SELECT * FROM events WHERE node IN (SELECT * FROM read_csv('/etc/passwd'))",
    "WITH x AS (SELECT * FROM read_json('/etc/x.json')) SELECT * FROM x",
    "EXPLAIN COPY events TO '/tmp/x'",
    "EXPLAIN INSERT INTO events VALUES (1)",
    "WITH x AS (SELECT 1) INSERT INTO events SELECT * FROM x",
    "WITH x AS (SELECT 1) DELETE FROM events",
    "WITH x AS (SELECT 1) UPDATE events SET node = 'x'",
    "SELECT 1; DROP TABLE events",
    "SELECT 1; SELECT 2",
    "PREPARE p AS SELECT 1",
    "CREATE FUNCTION f() RETURNS INT RETURN 1",
];

const DICT: &[&[u8]] = &[
    b" ", b"\t", b"\n", b";", b"(", b")", b",", b".", b"'", b"\"", b"*", b"--", b"/*", b"*/", b"/* c */", b"-- c\n",
    b"SELECT ", b"FROM ", b"WHERE ", b"WITH x AS (SELECT 1) ", b"INSERT INTO events ", b"VALUES (1)", b"UPDATE ",
    b"DELETE FROM ", b"DROP TABLE ", b"CREATE ", b"EXTERNAL ", b"TABLE ", b"VIEW ", b"COPY ", b" TO '/tmp/x'",
    b"EXPLAIN ", b"ANALYZE ", b"SHOW ", b"SET ", b"RESET ", b"DESCRIBE ", b"UNION ALL ", b"JOIN ", b"ON true ",
    b"LATERAL ", b"UNNEST(", b"generate_series(", b"range(", b"read_parquet(", b"read_csv(", b"'/etc/passwd'",
    b"\"s3://b/x\"", b"file://", b".parquet", b".csv", b".json", b"events", b"information_schema.", b"$1", b"?",
    b"e'\\x41'", b"$$x$$", b"[1]", b"{", b"}", b"::", b"CASE WHEN ", b"ELSE ", b"END ", b"((((((((((", b"))))))))))",
    b"\xc3\xa9", b"\0", b"0x", b"1e309", b"9223372036854775808",
];

/// An independent oracle: every statement node, nested ones included, is a
/// query, catalog browsing, or an EXPLAIN of those.
#[derive(Debug, Default)]
struct NestedStatements {
    bad: Option<String>,
}

impl Visitor for NestedStatements {
    type Break = ();

    fn pre_visit_statement(&mut self, s: &Statement) -> ControlFlow<()> {
        match s {
            Statement::Query(_) | Statement::ShowTables { .. } | Statement::ShowColumns { .. } | Statement::ExplainTable { .. } | Statement::Explain { .. } => {
                ControlFlow::Continue(())
            }
            other => {
                self.bad = Some(other.to_string());
                ControlFlow::Break(())
            }
        }
    }
}

fn read_only(s: &DfStatement) -> Result<(), String> {
    match s {
        DfStatement::Statement(s) => {
            let mut v = NestedStatements::default();
            let _ = s.visit(&mut v);
            v.bad.map_or(Ok(()), |b| Err(format!("nested statement {b:?}")))
        }
        DfStatement::Explain(e) => read_only(&e.statement),
        other => Err(format!("statement kind {other:?}")),
    }
}

fn check_accepted(sql: &str) {
    let Ok(statement) = check(sql) else { return };
    let parsed = DFParser::parse_sql(sql).unwrap_or_else(|e| panic!("accepted but does not parse: {e}: {sql:?}"));
    assert_eq!(parsed.len(), 1, "accepted {} statements: {sql:?}", parsed.len());
    if let Err(why) = read_only(&statement) {
        panic!("accepted a statement that is not read-only ({why}): {sql:?}");
    }
    let canonical = statement.to_string();
    if let Err(Error::Forbidden(m)) = check(&canonical) {
        panic!("accepted {sql:?} but refuses its canonical form {canonical:?}: {m}");
    }
}

#[test]
fn fuzz_guard() {
    let seeds: Vec<&'static [u8]> = ALLOWED.iter().chain(FORBIDDEN).map(|s| s.as_bytes()).collect();
    let seeds: &'static [&'static [u8]] = seeds.leak();
    let m = Mutator { seeds, dict: DICT };
    run("guard", 100_000, move |rng| m.input(rng), |data| check_accepted(&String::from_utf8_lossy(data)));
}

/// Calls `f` on each run of text outside quotes and comments, and copies
/// the rest as is.
fn rewrite_outside_quotes(sql: &str, mut f: impl FnMut(&str, &mut String)) -> String {
    let mut out = String::new();
    let mut rest = sql;
    while !rest.is_empty() {
        let quoted = rest.find(['\'', '"']).map(|i| (i, &rest[i..i + 1]));
        let comment = rest.find("--").map(|i| (i, "\n"));
        let next = match (quoted, comment) {
            (Some(q), Some(c)) => Some(if q.0 < c.0 { q } else { c }),
            (q, c) => q.or(c),
        };
        let Some((i, close)) = next else {
            f(rest, &mut out);
            break;
        };
        f(&rest[..i], &mut out);
        let open_len = if close == "\n" { 2 } else { 1 };
        let end = rest[i + open_len..].find(close).map_or(rest.len(), |j| i + open_len + j + close.len());
        out.push_str(&rest[i..end]);
        rest = &rest[end..];
    }
    out
}

/// A harmless rewrite: random letter case and whitespace, comments where
/// whitespace was, maybe a leading comment and a trailing `;` or comment.
fn variant(rng: &mut Rng, sql: &str) -> String {
    const GAPS: [&str; 7] = [" ", "  ", "\t", "\n", "\r\n ", " /* x */ ", "/**/ "];
    let mut out = String::new();
    if rng.one_in(4) {
        let lead = *rng.pick(&["/* lead */ ", "-- lead\n", "\n\t ", "  "]);
        out.push_str(lead);
    }
    out += &rewrite_outside_quotes(sql, |text, out| {
        for c in text.chars() {
            if c == ' ' {
                let gap = if rng.one_in(3) { *rng.pick(&GAPS) } else { " " };
                out.push_str(gap);
            } else if c.is_ascii_alphabetic() && rng.one_in(2) {
                out.push(if c.is_ascii_uppercase() { c.to_ascii_lowercase() } else { c.to_ascii_uppercase() });
            } else {
                out.push(c);
            }
        }
    });
    match rng.below(5) {
        0 => out.push(';'),
        1 => out.push_str(" ;\n"),
        2 => out.push_str(" -- trailing"),
        3 => out.push_str("; /* end */"),
        _ => {}
    }
    out
}

fn check_variant(data: &[u8]) {
    let (expect_ok, sql) = (data[0] == b'+', String::from_utf8(data[1..].to_vec()).expect("utf-8"));
    match (expect_ok, check(&sql)) {
        (true, Ok(_)) | (false, Err(Error::Forbidden(_))) => {}
        (true, Err(e)) => panic!("a rewrite of an allowed statement is refused: {sql:?}: {e}"),
        (false, Ok(_)) => panic!("a rewrite of a forbidden statement passes: {sql:?}"),
        (false, Err(e)) => panic!("a rewrite of a forbidden statement no longer parses: {sql:?}: {e}"),
    }
}

#[test]
fn fuzz_guard_variants() {
    let generate = |rng: &mut Rng| {
        let (mark, seed) = if rng.one_in(2) { (b'+', *rng.pick(ALLOWED)) } else { (b'-', *rng.pick(FORBIDDEN)) };
        let mut data = vec![mark];
        data.extend_from_slice(variant(rng, seed).as_bytes());
        data
    };
    run("guard_variants", 20_000, generate, check_variant);
}

#[test]
fn seeds_are_classified() {
    for s in ALLOWED {
        check(s).unwrap_or_else(|e| panic!("{s}: {e}"));
        check_accepted(s);
    }
    for s in FORBIDDEN {
        assert!(matches!(check(s), Err(Error::Forbidden(_))), "{s}: {:?}", check(s).err());
    }
}
