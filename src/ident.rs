//! Postgres identifiers: reading them as the operator writes them, and
//! quoting them (and literals) for generated SQL.
//!
//! Reading follows Postgres's own lexer (`scan.l`): an unquoted identifier is
//! folded to lower case (ASCII letters only, as Postgres does in multibyte
//! encodings), a quoted one is kept verbatim with `""` read as `"`. Writing
//! always quotes, so a name that came from the catalog round-trips exactly
//! whatever its case, spaces or quotes.

use std::fmt;
use std::str::FromStr;

/// `NAMEDATALEN - 1`: Postgres silently truncates longer identifiers (with a
/// NOTICE), which would make the spec name a different table than it says.
pub const MAX_IDENTIFIER_BYTES: usize = 63;

/// The schema assumed for an unqualified table name.
pub const DEFAULT_SCHEMA: &str = "public";

/// Quote an identifier: always double-quoted, embedded `"` doubled.
///
/// Always quoting (unlike Postgres's `quote_ident()`, which leaves plain
/// lower-case names bare) keeps generated SQL independent of the keyword list
/// of the server version: `"user"`, `"order"` and `"Order Items"` all work.
pub fn quote_ident(name: &str) -> String {
    let mut out = String::with_capacity(name.len() + 2);
    out.push('"');
    for ch in name.chars() {
        if ch == '"' {
            out.push('"');
        }
        out.push(ch);
    }
    out.push('"');
    out
}

/// Quote a string literal so it means the same text whatever the server's
/// `standard_conforming_strings` is: `'` is doubled, and a value holding a
/// backslash is written as an escape string (`E'a\\b'`), exactly as
/// Postgres's own `quote_literal()` does.
pub fn quote_literal(value: &str) -> String {
    let mut out = String::with_capacity(value.len() + 3);
    if value.contains('\\') {
        out.push('E');
    }
    out.push('\'');
    for ch in value.chars() {
        match ch {
            '\'' => out.push_str("''"),
            '\\' => out.push_str("\\\\"),
            _ => out.push(ch),
        }
    }
    out.push('\'');
    out
}

/// A schema-qualified relation name, both parts exactly as stored in the
/// catalog (already folded / unquoted). Displays quoted: `"schema"."name"`.
#[derive(Clone, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct QualifiedName {
    pub schema: String,
    pub name: String,
}

impl QualifiedName {
    pub fn new(schema: impl Into<String>, name: impl Into<String>) -> Self {
        QualifiedName {
            schema: schema.into(),
            name: name.into(),
        }
    }

    /// Read `users` (schema `public`), `public.users` or
    /// `"My Schema"."Order Items"` as SQL would.
    pub fn parse(text: &str) -> Result<Self, IdentError> {
        let mut parts = parse_parts(text)?;
        match parts.len() {
            1 => Ok(QualifiedName::new(DEFAULT_SCHEMA, parts.remove(0))),
            2 => {
                let name = parts.remove(1);
                Ok(QualifiedName::new(parts.remove(0), name))
            }
            n => Err(IdentError::TooManyParts(n)),
        }
    }
}

impl fmt::Display for QualifiedName {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "{}.{}",
            quote_ident(&self.schema),
            quote_ident(&self.name)
        )
    }
}

impl FromStr for QualifiedName {
    type Err = IdentError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        QualifiedName::parse(s)
    }
}

/// Read a single identifier (a column name): `status`, `Status` (folds to
/// `status`) or `"Status"` (kept).
pub fn parse_identifier(text: &str) -> Result<String, IdentError> {
    let mut parts = parse_parts(text)?;
    if parts.len() != 1 {
        return Err(IdentError::QualifiedColumn);
    }
    Ok(parts.remove(0))
}

/// Why a text is not a Postgres identifier. Messages say what is wrong; the
/// caller adds where it was and what to write instead.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum IdentError {
    #[error("the name is empty")]
    Empty,
    #[error("a name part is empty (two dots, or a dot at either end)")]
    EmptyPart,
    #[error("a quoted name is never closed (missing '\"')")]
    UnterminatedQuote,
    #[error("\"\" is a zero-length name, which Postgres does not allow")]
    ZeroLength,
    #[error(
        "unexpected {0:?} in an unquoted name (unquoted names are letters, digits, _ and $); \
         double-quote the name to use it"
    )]
    UnexpectedChar(char),
    #[error("a name part starts with a digit or $; double-quote it")]
    BadStart,
    #[error("{0:?} is longer than {MAX_IDENTIFIER_BYTES} bytes, which Postgres would truncate")]
    TooLong(String),
    #[error("names may not contain a NUL character")]
    Nul,
    #[error("{0} dot-separated parts; give at most schema.table")]
    TooManyParts(usize),
    #[error("a column name has no schema or table part")]
    QualifiedColumn,
}

/// Split a dotted name into its parts, each unquoted (folded) or quoted.
/// Whitespace is allowed around the parts and dots, as in SQL.
fn parse_parts(text: &str) -> Result<Vec<String>, IdentError> {
    if text.contains('\0') {
        return Err(IdentError::Nul);
    }
    if text.trim().is_empty() {
        return Err(IdentError::Empty);
    }
    let mut parts = Vec::new();
    let mut chars = text.chars().peekable();
    loop {
        while chars.next_if(|c| c.is_whitespace()).is_some() {}
        let part = match chars.peek() {
            None | Some('.') => return Err(IdentError::EmptyPart),
            Some('"') => {
                chars.next();
                let mut part = String::new();
                loop {
                    match chars.next() {
                        None => return Err(IdentError::UnterminatedQuote),
                        Some('"') if chars.next_if_eq(&'"').is_some() => part.push('"'),
                        Some('"') => break,
                        Some(c) => part.push(c),
                    }
                }
                if part.is_empty() {
                    return Err(IdentError::ZeroLength);
                }
                part
            }
            Some(_) => {
                let mut part = String::new();
                while let Some(c) = chars.next_if(|&c| is_ident_cont(c)) {
                    // Postgres folds only ASCII letters when the encoding is
                    // multibyte (UTF-8): `Ä` stays `Ä`.
                    part.push(c.to_ascii_lowercase());
                }
                match part.chars().next() {
                    None => {
                        let c = chars.next().unwrap_or('.');
                        return Err(IdentError::UnexpectedChar(c));
                    }
                    Some(first) if !is_ident_start(first) => return Err(IdentError::BadStart),
                    Some(_) => part,
                }
            }
        };
        if part.len() > MAX_IDENTIFIER_BYTES {
            return Err(IdentError::TooLong(part));
        }
        parts.push(part);
        while chars.next_if(|c| c.is_whitespace()).is_some() {}
        match chars.next() {
            None => return Ok(parts),
            Some('.') => continue,
            Some(c) => return Err(IdentError::UnexpectedChar(c)),
        }
    }
}

/// `ident_start` in scan.l: `[A-Za-z\200-\377_]` (any non-ASCII character).
fn is_ident_start(c: char) -> bool {
    c.is_ascii_alphabetic() || c == '_' || !c.is_ascii()
}

/// `ident_cont` in scan.l: `ident_start` plus digits and `$`.
fn is_ident_cont(c: char) -> bool {
    is_ident_start(c) || c.is_ascii_digit() || c == '$'
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    proptest! {
        /// Whatever the catalog holds (any text but NUL), quoting and reading
        /// back gives the same name.
        #[test]
        fn quoted_names_round_trip(schema in "[^\\x00]{1,15}", name in "[^\\x00]{1,15}") {
            let qualified = QualifiedName::new(schema, name);
            prop_assert_eq!(QualifiedName::parse(&qualified.to_string()), Ok(qualified.clone()));
            prop_assert_eq!(parse_identifier(&quote_ident(&qualified.name)), Ok(qualified.name));
        }

        #[test]
        fn parsing_never_panics(text in "\\PC*") {
            let _ = QualifiedName::parse(&text);
        }
    }

    fn qn(s: &str) -> QualifiedName {
        QualifiedName::parse(s).unwrap()
    }

    #[test]
    fn quotes_identifiers() {
        assert_eq!(quote_ident("users"), r#""users""#);
        assert_eq!(quote_ident("Order Items"), r#""Order Items""#);
        assert_eq!(quote_ident(r#"a"b"#), r#""a""b""#);
        assert_eq!(quote_ident(r#"""#), r#""""""#);
    }

    #[test]
    fn quotes_literals() {
        assert_eq!(quote_literal("abc"), "'abc'");
        assert_eq!(quote_literal("it's"), "'it''s'");
        assert_eq!(quote_literal(r"a\b"), r"E'a\\b'");
        assert_eq!(quote_literal(r"'\"), r"E'''\\'");
        assert_eq!(quote_literal(""), "''");
    }

    #[test]
    fn parses_table_names() {
        assert_eq!(qn("users"), QualifiedName::new("public", "users"));
        assert_eq!(qn("Users"), QualifiedName::new("public", "users"));
        assert_eq!(qn("public.users"), QualifiedName::new("public", "users"));
        assert_eq!(qn(" app . Users "), QualifiedName::new("app", "users"));
        assert_eq!(
            qn(r#""My Schema"."Order Items""#),
            QualifiedName::new("My Schema", "Order Items")
        );
        assert_eq!(
            qn(r#"Sales."Order ""Items""""#),
            QualifiedName::new("sales", r#"Order "Items""#)
        );
        assert_eq!(qn(r#""a.b".c"#), QualifiedName::new("a.b", "c"));
        assert_eq!(qn("_t$1"), QualifiedName::new("public", "_t$1"));
        assert_eq!(qn("Ärger"), QualifiedName::new("public", "Ärger"));
    }

    #[test]
    fn displays_quoted_and_round_trips() {
        let name = QualifiedName::new("My Schema", r#"a"b"#);
        assert_eq!(name.to_string(), r#""My Schema"."a""b""#);
        assert_eq!(qn(&name.to_string()), name);
    }

    #[test]
    fn rejects_bad_names() {
        let err = |s: &str| QualifiedName::parse(s).unwrap_err();
        assert_eq!(err(""), IdentError::Empty);
        assert_eq!(err("  "), IdentError::Empty);
        assert_eq!(err("a..b"), IdentError::EmptyPart);
        assert_eq!(err(".a"), IdentError::EmptyPart);
        assert_eq!(err("a."), IdentError::EmptyPart);
        assert_eq!(err(r#""abc"#), IdentError::UnterminatedQuote);
        assert_eq!(err(r#""""#), IdentError::ZeroLength);
        assert_eq!(err("my table"), IdentError::UnexpectedChar('t'));
        assert_eq!(err("a-b"), IdentError::UnexpectedChar('-'));
        assert_eq!(err("1abc"), IdentError::BadStart);
        assert_eq!(err("$a"), IdentError::BadStart);
        assert_eq!(err("a.b.c"), IdentError::TooManyParts(3));
        assert_eq!(err("a\0"), IdentError::Nul);
        assert!(matches!(err(&"x".repeat(64)), IdentError::TooLong(_)));
        assert_eq!(qn(&"x".repeat(63)).name.len(), 63);
    }

    #[test]
    fn parses_column_names() {
        assert_eq!(parse_identifier("Status").unwrap(), "status");
        assert_eq!(parse_identifier(r#""Status""#).unwrap(), "Status");
        assert_eq!(
            parse_identifier("t.status").unwrap_err(),
            IdentError::QualifiedColumn
        );
    }
}
