//! Tenant ids and per-tenant topics.

/// Per-tenant topics are named `estate.events.<tenant>`.
pub const TENANT_TOPIC_PREFIX: &str = "estate.events.";

/// True for a valid tenant id: `[a-z0-9][a-z0-9_-]{0,62}`.
///
/// The rule keeps tenant ids safe as path segments (`tenant=<t>/`), as topic
/// suffixes and as SQL literals: no dots, slashes, `=` or quotes.
pub fn is_valid_tenant(t: &str) -> bool {
    let b = t.as_bytes();
    if b.is_empty() || b.len() > 63 {
        return false;
    }
    let first_ok = b[0].is_ascii_lowercase() || b[0].is_ascii_digit();
    first_ok
        && b[1..]
            .iter()
            .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || *c == b'_' || *c == b'-')
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tenant_rule() {
        for ok in ["acme", "a", "0day", "acme-corp_2", &"a".repeat(63)] {
            assert!(is_valid_tenant(ok), "{ok}");
        }
        for bad in [
            "", "-acme", "_a", "Acme", "ac.me", "../x", "a=b", "a/b", "a b", "é",
            &"a".repeat(64),
        ] {
            assert!(!is_valid_tenant(bad), "{bad}");
        }
    }
}
