//! Operation-name normalization, so that `GET /orders/4711` and `GET /orders/4712`
//! are one series: numeric, UUID and long hex path segments become `{id}`; SQL string
//! and number literals become `?` (and `IN (?, ?, ?)` becomes `IN (?)`).

use ahash::AHashMap;

use crate::model::{CallType, Sym};

/// Largest number of distinct names remembered; beyond it names are still normalized,
/// just not cached.
const CACHE_LIMIT: usize = 1 << 16;

/// Normalizes operation names, caching results per input symbol.
#[derive(Debug, Default)]
pub struct OperationNormalizer {
    cache: AHashMap<(Sym, CallType), Sym>,
    scratch: String,
}

impl OperationNormalizer {
    /// The normalized form of `name` for a span of `call_type`.
    pub fn normalize(&mut self, name: Sym, call_type: CallType) -> Sym {
        if let Some(s) = self.cache.get(&(name, call_type)) {
            return *s;
        }
        self.scratch.clear();
        let text = name.as_str();
        if call_type == CallType::Db || looks_like_sql(text) {
            normalize_sql(text, &mut self.scratch);
        } else {
            normalize_path(text, &mut self.scratch);
        }
        let out = if self.scratch == text {
            name
        } else {
            Sym::new(&self.scratch)
        };
        if self.cache.len() < CACHE_LIMIT {
            self.cache.insert((name, call_type), out);
        }
        out
    }
}

fn looks_like_sql(s: &str) -> bool {
    let head = s.trim_start();
    [
        "SELECT ", "INSERT ", "UPDATE ", "DELETE ", "select ", "insert ", "update ", "delete ",
    ]
    .iter()
    .any(|k| head.starts_with(k))
        && (s.contains('\'') || s.bytes().any(|b| b.is_ascii_digit()))
}

fn is_id_segment(seg: &str) -> bool {
    if seg.is_empty() {
        return false;
    }
    let b = seg.as_bytes();
    if b.iter().all(u8::is_ascii_digit) {
        return true;
    }
    // UUID: 8-4-4-4-12 hex digits.
    if b.len() == 36
        && b.iter().enumerate().all(|(i, c)| {
            if matches!(i, 8 | 13 | 18 | 23) {
                *c == b'-'
            } else {
                c.is_ascii_hexdigit()
            }
        })
    {
        return true;
    }
    // Long hex (object ids, hashes) with at least one digit.
    b.len() >= 16 && b.iter().all(u8::is_ascii_hexdigit) && b.iter().any(u8::is_ascii_digit)
}

/// `GET /api/orders/81723?x=1` -> `GET /api/orders/{id}`.
fn normalize_path(s: &str, out: &mut String) {
    let s = s.split(['?', '#']).next().unwrap_or(s);
    let mut first = true;
    for seg in s.split('/') {
        if !first {
            out.push('/');
        }
        first = false;
        // A segment may carry the method before the path: `GET 123` stays as is unless
        // the whole segment is an id.
        match seg.rsplit_once(' ') {
            Some((head, tail)) if is_id_segment(tail) => {
                out.push_str(head);
                out.push_str(" {id}");
            }
            _ if is_id_segment(seg) => out.push_str("{id}"),
            _ => out.push_str(seg),
        }
    }
}

/// Replaces string and number literals by `?` and collapses `IN (?, ?, ...)`.
fn normalize_sql(s: &str, out: &mut String) {
    let b = s.as_bytes();
    let mut i = 0;
    let mut prev_ident = false;
    while i < b.len() {
        let c = b[i];
        if c == b'\'' {
            // A quoted string; '' inside is an escaped quote.
            i += 1;
            while i < b.len() {
                if b[i] == b'\'' {
                    if i + 1 < b.len() && b[i + 1] == b'\'' {
                        i += 2;
                        continue;
                    }
                    break;
                }
                i += 1;
            }
            i += 1;
            out.push('?');
            prev_ident = false;
            continue;
        }
        if c.is_ascii_digit() && !prev_ident {
            while i < b.len() && (b[i].is_ascii_digit() || b[i] == b'.') {
                i += 1;
            }
            out.push('?');
            continue;
        }
        prev_ident = c.is_ascii_alphanumeric() || c == b'_';
        // Copy one UTF-8 character.
        let len = utf8_len(c);
        let end = (i + len).min(b.len());
        out.push_str(s.get(i..end).unwrap_or(""));
        i = end;
    }
    collapse_in_lists(out);
}

fn utf8_len(first: u8) -> usize {
    match first {
        0x00..=0x7f => 1,
        0xc0..=0xdf => 2,
        0xe0..=0xef => 3,
        _ => 4,
    }
}

fn collapse_in_lists(s: &mut String) {
    while let Some(pos) = s.find("?, ?") {
        s.replace_range(pos..pos + 4, "?");
    }
    while let Some(pos) = s.find("?,?") {
        s.replace_range(pos..pos + 3, "?");
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn norm(s: &str, ct: CallType) -> String {
        OperationNormalizer::default()
            .normalize(Sym::new(s), ct)
            .as_str()
            .to_owned()
    }

    #[test]
    fn paths() {
        assert_eq!(
            norm("GET /api/orders/81723", CallType::Http),
            "GET /api/orders/{id}"
        );
        assert_eq!(
            norm(
                "/users/3f2b8c1e-9a4d-4e2b-8f6a-1c2d3e4f5a6b/cart?x=1",
                CallType::Http
            ),
            "/users/{id}/cart"
        );
        assert_eq!(
            norm("GET /api/orders/{id}", CallType::Http),
            "GET /api/orders/{id}"
        );
        assert_eq!(
            norm("/blob/5f2a9c0d1e3b4a6f7c8d", CallType::Http),
            "/blob/{id}"
        );
        assert_eq!(
            norm("/v2/items", CallType::Http),
            "/v2/items",
            "v2 is not an id"
        );
        assert_eq!(norm("GET", CallType::Http), "GET");
    }

    #[test]
    fn sql() {
        assert_eq!(
            norm(
                "SELECT * FROM orders WHERE id = 4711 AND s = 'it''s'",
                CallType::Db
            ),
            "SELECT * FROM orders WHERE id = ? AND s = ?"
        );
        assert_eq!(
            norm("DELETE FROM t WHERE id IN (1, 2, 3)", CallType::Db),
            "DELETE FROM t WHERE id IN (?)"
        );
        assert_eq!(
            norm("SELECT col2 FROM t2", CallType::Db),
            "SELECT col2 FROM t2",
            "identifiers keep digits"
        );
        assert_eq!(norm("SELECT orders", CallType::Db), "SELECT orders");
        assert_eq!(norm("SELECT 'é' FROM t", CallType::Db), "SELECT ? FROM t");
    }

    #[test]
    fn cached_and_idempotent() {
        let mut n = OperationNormalizer::default();
        let a = n.normalize(Sym::new("GET /a/1"), CallType::Http);
        let b = n.normalize(a, CallType::Http);
        assert_eq!(a, b);
    }
}
