//! Bearer tokens from `tokens.toml`, reloaded on SIGHUP.
//!
//! A token is either a tenant's (its sessions see only that tenant's files)
//! or an operator's (every tenant). A file that fails to load on reload is
//! reported and the previous tokens stay in force, so a typo never locks
//! every user out, nor lets anyone in.

use std::path::{Path, PathBuf};
use std::sync::{Arc, RwLock};

use serde::Deserialize;

use crate::error::{Error, Result};

/// Who a request acts for.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum Principal {
    /// Sees every tenant.
    Operator,
    /// Sees one tenant only.
    Tenant(String),
}

impl Principal {
    /// The key that concurrency slots are counted under.
    pub fn scope(&self) -> &str {
        match self {
            Principal::Operator => "*operator*",
            Principal::Tenant(t) => t,
        }
    }

    /// The tenant for metric labels (`operator` for operators).
    pub fn label(&self) -> &str {
        match self {
            Principal::Operator => "operator",
            Principal::Tenant(t) => t,
        }
    }
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct TokensFile {
    #[serde(default)]
    token: Vec<TokenEntry>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct TokenEntry {
    token: String,
    tenant: Option<String>,
    role: Option<String>,
}

/// A loaded token table.
#[derive(Debug, Default)]
struct Tokens {
    entries: Vec<(String, Principal)>,
}

fn load(path: &Path) -> Result<Tokens> {
    let text = std::fs::read_to_string(path)
        .map_err(|e| Error::Config(format!("reading auth file {}: {e}", path.display())))?;
    let file: TokensFile = toml::from_str(&text)
        .map_err(|e| Error::Config(format!("auth file {}: {e}", path.display())))?;
    let mut entries = Vec::with_capacity(file.token.len());
    for (i, t) in file.token.into_iter().enumerate() {
        let at = format!("auth file {}, token #{}", path.display(), i + 1);
        if t.token.len() < 8 {
            return Err(Error::Config(format!("{at}: a token must be at least 8 characters")));
        }
        let principal = match (t.tenant, t.role.as_deref()) {
            (None, Some("operator")) => Principal::Operator,
            (Some(tenant), None | Some("tenant")) => {
                if !estate_schemas::is_valid_tenant(&tenant) {
                    return Err(Error::Config(format!(
                        "{at}: invalid tenant id {tenant:?} (expected [a-z0-9][a-z0-9_-]{{0,62}})"
                    )));
                }
                Principal::Tenant(tenant)
            }
            (Some(_), Some("operator")) => {
                return Err(Error::Config(format!("{at}: an operator token must not name a tenant")));
            }
            (_, Some(other)) => {
                return Err(Error::Config(format!("{at}: unknown role {other:?} (operator or tenant)")));
            }
            (None, None) => {
                return Err(Error::Config(format!("{at}: needs `tenant = \"…\"` or `role = \"operator\"`")));
            }
        };
        if entries.iter().any(|(k, _): &(String, Principal)| k == &t.token) {
            return Err(Error::Config(format!("{at}: duplicate token")));
        }
        entries.push((t.token, principal));
    }
    Ok(Tokens { entries })
}

/// Compares without an early exit, so response timing does not reveal how
/// much of a guessed token was right.
fn constant_time_eq(a: &[u8], b: &[u8]) -> bool {
    if a.len() != b.len() {
        return false;
    }
    a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

/// The token table in force.
#[derive(Debug)]
pub struct Auth {
    path: PathBuf,
    tokens: RwLock<Arc<Tokens>>,
}

impl Auth {
    /// Loads the token file; an unreadable or invalid file is a startup error.
    pub fn load(path: &Path) -> Result<Auth> {
        let tokens = load(path)?;
        tracing::info!(path = %path.display(), tokens = tokens.entries.len(), "auth file loaded");
        Ok(Auth { path: path.to_owned(), tokens: RwLock::new(Arc::new(tokens)) })
    }

    /// Re-reads the file. On error the previous tokens stay in force.
    pub fn reload(&self) -> Result<usize> {
        let tokens = load(&self.path)?;
        let n = tokens.entries.len();
        *self.tokens.write().expect("auth lock poisoned") = Arc::new(tokens);
        Ok(n)
    }

    /// Resolves an `Authorization` header value (`Bearer <token>`).
    pub fn authenticate(&self, header: Option<&str>) -> Result<Principal> {
        let header = header.ok_or(Error::Unauthorized("missing bearer token"))?;
        let token = header
            .strip_prefix("Bearer ")
            .or_else(|| header.strip_prefix("bearer "))
            .ok_or(Error::Unauthorized("expected `Authorization: Bearer <token>`"))?
            .trim();
        let tokens = self.tokens.read().expect("auth lock poisoned").clone();
        let mut found = None;
        for (t, p) in &tokens.entries {
            if constant_time_eq(t.as_bytes(), token.as_bytes()) {
                found = Some(p.clone());
            }
        }
        found.ok_or(Error::Unauthorized("unknown token"))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn write(dir: &Path, text: &str) -> PathBuf {
        let p = dir.join("tokens.toml");
        std::fs::write(&p, text).unwrap();
        p
    }

    #[test]
    fn tokens_resolve_and_reload() {
        let dir = tempfile::tempdir().unwrap();
        let p = write(
            dir.path(),
            "[[token]]\ntoken = \"acme-secret\"\ntenant = \"acme\"\n[[token]]\ntoken = \"noc-secret\"\nrole = \"operator\"\n",
        );
        let auth = Auth::load(&p).unwrap();
        assert_eq!(auth.authenticate(Some("Bearer acme-secret")).unwrap(), Principal::Tenant("acme".into()));
        assert_eq!(auth.authenticate(Some("Bearer noc-secret")).unwrap(), Principal::Operator);
        assert!(matches!(auth.authenticate(None), Err(Error::Unauthorized(_))));
        assert!(matches!(auth.authenticate(Some("Bearer nope-nope")), Err(Error::Unauthorized(_))));
        assert!(matches!(auth.authenticate(Some("acme-secret")), Err(Error::Unauthorized(_))));

        write(dir.path(), "[[token]]\ntoken = \"beta-secret\"\ntenant = \"beta\"\n");
        assert_eq!(auth.reload().unwrap(), 1);
        assert!(auth.authenticate(Some("Bearer acme-secret")).is_err());
        assert_eq!(auth.authenticate(Some("Bearer beta-secret")).unwrap(), Principal::Tenant("beta".into()));

        // A broken file keeps the previous tokens.
        write(dir.path(), "[[token]]\ntoken = \"x\"\n");
        assert!(auth.reload().is_err());
        assert!(auth.authenticate(Some("Bearer beta-secret")).is_ok());
    }

    #[test]
    fn bad_files_are_refused() {
        let dir = tempfile::tempdir().unwrap();
        for (text, want) in [
            ("[[token]]\ntoken = \"long-enough\"\ntenant = \"../etc\"\n", "invalid tenant id"),
            ("[[token]]\ntoken = \"long-enough\"\ntenant = \"a=b\"\n", "invalid tenant id"),
            ("[[token]]\ntoken = \"short\"\ntenant = \"acme\"\n", "at least 8"),
            ("[[token]]\ntoken = \"long-enough\"\nrole = \"admin\"\n", "unknown role"),
            ("[[token]]\ntoken = \"long-enough\"\n", "needs"),
            ("[[token]]\ntoken = \"long-enough\"\ntenant = \"a\"\nextra = 1\n", "unknown field"),
            ("[[token]]\ntoken = \"long-enough\"\ntenant = \"a\"\n[[token]]\ntoken = \"long-enough\"\ntenant = \"b\"\n", "duplicate"),
        ] {
            let p = write(dir.path(), text);
            let err = Auth::load(&p).unwrap_err().to_string();
            assert!(err.contains(want), "{text:?}: {err}");
        }
    }
}
