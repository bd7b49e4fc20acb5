//! A serde `Deserializer` over the positioned YAML tree.
//!
//! Every error it returns carries the [`NodeId`] of the innermost node being read when the
//! error arose: the key for an unknown key, the value for a bad value, the mapping for a
//! missing key. [`deserialize_all`] retries after removing the offending entry, so one
//! component reports all of its problems, not just the first.

use std::fmt;

use serde::de::{
    self, DeserializeOwned, DeserializeSeed, EnumAccess, MapAccess, SeqAccess, Unexpected,
    VariantAccess, Visitor,
};

use super::yaml::{Entry, Node, NodeId, Resolved, Value};

/// What went wrong, in terms the loader turns into a message.
#[derive(Debug, Clone, PartialEq)]
pub(crate) enum DeErrorKind {
    /// A key the component does not know.
    UnknownField {
        /// The key found.
        field: String,
        /// The keys it knows.
        expected: &'static [&'static str],
    },
    /// A value not among an enum's names.
    UnknownVariant {
        /// The value found.
        variant: String,
        /// The names allowed.
        expected: &'static [&'static str],
    },
    /// A required key is absent.
    MissingField(&'static str),
    /// A value of the wrong type or out of range.
    Invalid {
        /// What was expected, in words (`a non-negative integer`).
        expected: String,
        /// What was found (`` `lots` ``).
        found: String,
    },
    /// Any other message (e.g. from a custom `Deserialize`, like durations).
    Custom(String),
}

/// An error located at a node of the tree.
#[derive(Debug, Clone, PartialEq)]
pub(crate) struct DeError {
    /// The innermost node being read when it arose.
    pub at: Option<NodeId>,
    /// What went wrong.
    pub kind: DeErrorKind,
}

impl DeError {
    fn new(kind: DeErrorKind) -> Self {
        DeError { at: None, kind }
    }
}

impl fmt::Display for DeError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match &self.kind {
            DeErrorKind::UnknownField { field, .. } => write!(f, "unknown key `{field}`"),
            DeErrorKind::UnknownVariant { variant, .. } => write!(f, "unknown value `{variant}`"),
            DeErrorKind::MissingField(field) => write!(f, "missing key `{field}`"),
            DeErrorKind::Invalid { expected, found } => {
                write!(f, "must be {expected}, found {found}")
            }
            DeErrorKind::Custom(msg) => f.write_str(msg),
        }
    }
}

impl std::error::Error for DeError {}

/// Describes serde's `Expected` in the words a job author uses.
fn expected_words(exp: &dyn de::Expected) -> String {
    let s = exp.to_string();
    match s.as_str() {
        "u8" | "u16" | "u32" | "u64" | "u128" | "usize" => "a non-negative integer".into(),
        "i8" | "i16" | "i32" | "i64" | "i128" | "isize" => "an integer".into(),
        "f32" | "f64" => "a number".into(),
        "a sequence" => "a list".into(),
        "path string" => "a path (string)".into(),
        "unit" => "nothing".into(),
        _ if s.starts_with("struct ") || s.starts_with("a map") => "a map".into(),
        _ => s,
    }
}

/// Describes serde's `Unexpected` the way the value appears in the file.
fn found_words(unexp: Unexpected<'_>) -> String {
    match unexp {
        Unexpected::Str(s) => format!("`{s}`"),
        Unexpected::Bool(b) => format!("`{b}`"),
        Unexpected::Unsigned(n) => format!("`{n}`"),
        Unexpected::Signed(n) => format!("`{n}`"),
        Unexpected::Float(n) => format!("`{n}`"),
        Unexpected::Char(c) => format!("`{c}`"),
        Unexpected::Unit | Unexpected::Option => "nothing (null)".into(),
        Unexpected::Seq => "a list".into(),
        Unexpected::Map => "a map".into(),
        other => other.to_string(),
    }
}

impl de::Error for DeError {
    fn custom<T: fmt::Display>(msg: T) -> Self {
        DeError::new(DeErrorKind::Custom(msg.to_string()))
    }

    fn invalid_type(unexp: Unexpected<'_>, exp: &dyn de::Expected) -> Self {
        DeError::new(DeErrorKind::Invalid {
            expected: expected_words(exp),
            found: found_words(unexp),
        })
    }

    fn invalid_value(unexp: Unexpected<'_>, exp: &dyn de::Expected) -> Self {
        DeError::invalid_type(unexp, exp)
    }

    fn invalid_length(len: usize, exp: &dyn de::Expected) -> Self {
        DeError::new(DeErrorKind::Invalid {
            expected: expected_words(exp),
            found: format!("a list of {len} items"),
        })
    }

    fn unknown_variant(variant: &str, expected: &'static [&'static str]) -> Self {
        DeError::new(DeErrorKind::UnknownVariant {
            variant: variant.to_owned(),
            expected,
        })
    }

    fn unknown_field(field: &str, expected: &'static [&'static str]) -> Self {
        DeError::new(DeErrorKind::UnknownField {
            field: field.to_owned(),
            expected,
        })
    }

    fn missing_field(field: &'static str) -> Self {
        DeError::new(DeErrorKind::MissingField(field))
    }

    fn duplicate_field(field: &'static str) -> Self {
        DeError::new(DeErrorKind::Custom(format!("duplicate key `{field}`")))
    }
}

/// Attaches `id` to an error that does not have a location yet.
fn at<T>(r: Result<T, DeError>, id: NodeId) -> Result<T, DeError> {
    r.map_err(|mut e| {
        if e.at.is_none() {
            e.at = Some(id);
        }
        e
    })
}

fn unexpected(node: &Node) -> Unexpected<'_> {
    match &node.value {
        Value::Scalar(s) => match s.resolve() {
            Resolved::Null => Unexpected::Unit,
            Resolved::Bool(b) => Unexpected::Bool(b),
            Resolved::Int(i) => match u64::try_from(i) {
                Ok(u) => Unexpected::Unsigned(u),
                Err(_) => Unexpected::Signed(i64::try_from(i).unwrap_or(i64::MIN)),
            },
            Resolved::Float(f) => Unexpected::Float(f),
            Resolved::Str(s) => Unexpected::Str(s),
        },
        Value::Seq(_) => Unexpected::Seq,
        Value::Map(_) => Unexpected::Map,
    }
}

/// Deserializes one node.
#[derive(Clone, Copy)]
pub(crate) struct NodeDe<'a> {
    node: &'a Node,
}

impl<'a> NodeDe<'a> {
    /// A deserializer for `node`.
    pub fn new(node: &'a Node) -> Self {
        NodeDe { node }
    }
}

fn visit_int<'de, V: Visitor<'de>>(v: V, i: i128) -> Result<V::Value, DeError> {
    if let Ok(u) = u64::try_from(i) {
        v.visit_u64(u)
    } else if let Ok(s) = i64::try_from(i) {
        v.visit_i64(s)
    } else {
        v.visit_i128(i)
    }
}

impl<'de> de::Deserializer<'de> for NodeDe<'_> {
    type Error = DeError;

    fn deserialize_any<V: Visitor<'de>>(self, v: V) -> Result<V::Value, DeError> {
        let r = match &self.node.value {
            Value::Scalar(s) => match s.resolve() {
                Resolved::Null => v.visit_unit(),
                Resolved::Bool(b) => v.visit_bool(b),
                Resolved::Int(i) => visit_int(v, i),
                Resolved::Float(f) => v.visit_f64(f),
                Resolved::Str(s) => v.visit_str(s),
            },
            Value::Seq(items) => v.visit_seq(SeqDe {
                iter: items.iter(),
                len: items.len(),
            }),
            Value::Map(entries) => v.visit_map(MapDe {
                iter: entries.iter(),
                value: None,
            }),
        };
        at(r, self.node.id)
    }

    fn deserialize_str<V: Visitor<'de>>(self, v: V) -> Result<V::Value, DeError> {
        // Any non-null scalar reads as a string: `start_time: 2026-01-01T00:00:00Z`,
        // `name: 2026` are strings to their author.
        let r = match &self.node.value {
            Value::Scalar(s) if s.resolve() != Resolved::Null => v.visit_str(&s.text),
            _ => return self.deserialize_any(v),
        };
        at(r, self.node.id)
    }

    fn deserialize_string<V: Visitor<'de>>(self, v: V) -> Result<V::Value, DeError> {
        self.deserialize_str(v)
    }

    fn deserialize_identifier<V: Visitor<'de>>(self, v: V) -> Result<V::Value, DeError> {
        self.deserialize_str(v)
    }

    fn deserialize_option<V: Visitor<'de>>(self, v: V) -> Result<V::Value, DeError> {
        let r = match &self.node.value {
            Value::Scalar(s) if s.resolve() == Resolved::Null => v.visit_none(),
            _ => v.visit_some(self),
        };
        at(r, self.node.id)
    }

    fn deserialize_newtype_struct<V: Visitor<'de>>(
        self,
        _name: &'static str,
        v: V,
    ) -> Result<V::Value, DeError> {
        at(v.visit_newtype_struct(self), self.node.id)
    }

    fn deserialize_enum<V: Visitor<'de>>(
        self,
        _name: &'static str,
        _variants: &'static [&'static str],
        v: V,
    ) -> Result<V::Value, DeError> {
        let r = match &self.node.value {
            Value::Scalar(s) if s.resolve() != Resolved::Null => v.visit_enum(EnumDe {
                variant: self.node,
                value: None,
            }),
            Value::Map(entries) if entries.len() == 1 => v.visit_enum(EnumDe {
                variant: &entries[0].key,
                value: Some(&entries[0].value),
            }),
            _ => Err(de::Error::invalid_type(unexpected(self.node), &v)),
        };
        at(r, self.node.id)
    }

    fn deserialize_ignored_any<V: Visitor<'de>>(self, v: V) -> Result<V::Value, DeError> {
        at(v.visit_unit(), self.node.id)
    }

    serde::forward_to_deserialize_any! {
        bool i8 i16 i32 i64 i128 u8 u16 u32 u64 u128 f32 f64 char
        bytes byte_buf unit unit_struct seq tuple tuple_struct map struct
    }
}

struct SeqDe<'a> {
    iter: std::slice::Iter<'a, Node>,
    len: usize,
}

impl<'de> SeqAccess<'de> for SeqDe<'_> {
    type Error = DeError;

    fn next_element_seed<T: DeserializeSeed<'de>>(
        &mut self,
        seed: T,
    ) -> Result<Option<T::Value>, DeError> {
        match self.iter.next() {
            // Errors raised after the node was read (a custom `Deserialize` rejecting
            // the string it got) are located here.
            Some(node) => at(seed.deserialize(NodeDe::new(node)), node.id).map(Some),
            None => Ok(None),
        }
    }

    fn size_hint(&self) -> Option<usize> {
        Some(self.len)
    }
}

struct MapDe<'a> {
    iter: std::slice::Iter<'a, Entry>,
    value: Option<&'a Node>,
}

impl<'de> MapAccess<'de> for MapDe<'_> {
    type Error = DeError;

    fn next_key_seed<K: DeserializeSeed<'de>>(
        &mut self,
        seed: K,
    ) -> Result<Option<K::Value>, DeError> {
        match self.iter.next() {
            Some(entry) => {
                self.value = Some(&entry.value);
                at(seed.deserialize(NodeDe::new(&entry.key)), entry.key.id).map(Some)
            }
            None => Ok(None),
        }
    }

    fn next_value_seed<V: DeserializeSeed<'de>>(&mut self, seed: V) -> Result<V::Value, DeError> {
        match self.value.take() {
            Some(node) => at(seed.deserialize(NodeDe::new(node)), node.id),
            None => Err(de::Error::custom(
                "a map value was read before its key (this is a bug)",
            )),
        }
    }

    fn size_hint(&self) -> Option<usize> {
        Some(self.iter.len())
    }
}

struct EnumDe<'a> {
    variant: &'a Node,
    value: Option<&'a Node>,
}

impl<'de, 'a> EnumAccess<'de> for EnumDe<'a> {
    type Error = DeError;
    type Variant = VariantDe<'a>;

    fn variant_seed<V: DeserializeSeed<'de>>(
        self,
        seed: V,
    ) -> Result<(V::Value, VariantDe<'a>), DeError> {
        let v = at(seed.deserialize(NodeDe::new(self.variant)), self.variant.id)?;
        Ok((
            v,
            VariantDe {
                variant: self.variant,
                value: self.value,
            },
        ))
    }
}

struct VariantDe<'a> {
    variant: &'a Node,
    value: Option<&'a Node>,
}

impl<'de> VariantAccess<'de> for VariantDe<'_> {
    type Error = DeError;

    fn unit_variant(self) -> Result<(), DeError> {
        match self.value {
            None => Ok(()),
            Some(node) => at(
                Err(de::Error::invalid_type(
                    unexpected(node),
                    &"a name without a value",
                )),
                node.id,
            ),
        }
    }

    fn newtype_variant_seed<T: DeserializeSeed<'de>>(self, seed: T) -> Result<T::Value, DeError> {
        match self.value {
            Some(node) => at(seed.deserialize(NodeDe::new(node)), node.id),
            None => at(
                Err(de::Error::invalid_type(
                    Unexpected::UnitVariant,
                    &"a map `name: value`",
                )),
                self.variant.id,
            ),
        }
    }

    fn tuple_variant<V: Visitor<'de>>(self, _len: usize, v: V) -> Result<V::Value, DeError> {
        match self.value {
            Some(node) => de::Deserializer::deserialize_seq(NodeDe::new(node), v),
            None => at(
                Err(de::Error::invalid_type(Unexpected::UnitVariant, &v)),
                self.variant.id,
            ),
        }
    }

    fn struct_variant<V: Visitor<'de>>(
        self,
        _fields: &'static [&'static str],
        v: V,
    ) -> Result<V::Value, DeError> {
        match self.value {
            Some(node) => de::Deserializer::deserialize_map(NodeDe::new(node), v),
            None => at(
                Err(de::Error::invalid_type(Unexpected::UnitVariant, &v)),
                self.variant.id,
            ),
        }
    }
}

/// Where a removed entry was: the container and, for a mapping, the key.
struct Removed {
    container: NodeId,
    key: Option<String>,
}

/// Removes the map entry (by key or value id) or the list item holding node `id`.
fn remove(node: &mut Node, id: NodeId) -> Option<Removed> {
    let container = node.id;
    match &mut node.value {
        Value::Scalar(_) => None,
        Value::Seq(items) => {
            if let Some(i) = items.iter().position(|n| n.id == id) {
                items.remove(i);
                return Some(Removed {
                    container,
                    key: None,
                });
            }
            items.iter_mut().find_map(|n| remove(n, id))
        }
        Value::Map(entries) => {
            if let Some(i) = entries
                .iter()
                .position(|e| e.key.id == id || e.value.id == id)
            {
                let entry = entries.remove(i);
                return Some(Removed {
                    container,
                    key: Some(entry.key_text().to_owned()),
                });
            }
            entries.iter_mut().find_map(|e| remove(&mut e.value, id))
        }
    }
}

fn count(node: &Node) -> usize {
    1 + match &node.value {
        Value::Scalar(_) => 0,
        Value::Seq(items) => items.iter().map(count).sum(),
        Value::Map(entries) => entries.iter().map(|e| 1 + count(&e.value)).sum(),
    }
}

/// Deserializes `root` into `T`, collecting every error: after each error the offending
/// entry is removed (a default takes its place, or the enclosing entry goes too) and
/// deserialization is retried. Returns the value read in the end (with the defaults
/// that replaced bad entries, so that it can still be checked further) if there was one.
pub(crate) fn deserialize_all<T: DeserializeOwned>(root: &Node) -> (Option<T>, Vec<DeError>) {
    let mut tree = root.clone();
    let mut errors = Vec::new();
    let mut removed: Vec<(NodeId, String)> = Vec::new();
    // Each retry removes at least one node, so this bounds the loop.
    for _ in 0..=count(root) {
        let e = match at(T::deserialize(NodeDe::new(&tree)), tree.id) {
            Ok(v) => return (Some(v), errors),
            Err(e) => e,
        };
        let Some(at) = e.at else {
            errors.push(e);
            break;
        };
        // A key we removed ourselves is not the author's mistake: the error that made us
        // remove it was reported already.
        let ours = matches!(&e.kind, DeErrorKind::MissingField(f)
            if removed.iter().any(|(c, k)| *c == at && k == f));
        if !ours {
            errors.push(e);
        }
        if at == tree.id {
            break;
        }
        match remove(&mut tree, at) {
            Some(Removed {
                container,
                key: Some(key),
            }) => removed.push((container, key)),
            Some(_) => {}
            None => break,
        }
    }
    (None, errors)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::job::yaml::parse;
    use serde::Deserialize;

    #[derive(Debug, Deserialize, PartialEq)]
    #[serde(deny_unknown_fields)]
    struct Inner {
        a: u32,
        #[serde(default)]
        b: Option<bool>,
    }

    #[derive(Debug, Deserialize, PartialEq)]
    #[serde(deny_unknown_fields)]
    struct Outer {
        #[serde(default)]
        n: f64,
        items: Vec<Inner>,
        #[serde(default)]
        e: Option<Kind>,
    }

    #[derive(Debug, Deserialize, PartialEq)]
    #[serde(rename_all = "snake_case")]
    enum Kind {
        OneThing,
        Other,
    }

    #[test]
    fn reads_values() {
        let doc = parse("n: 3\nitems:\n  - a: 1\n  - {a: 2, b: true}\ne: other\n").unwrap();
        let (v, errors) = deserialize_all::<Outer>(doc.root.as_ref().unwrap());
        assert!(errors.is_empty(), "{errors:?}");
        let v = v.unwrap();
        assert_eq!(v.n, 3.0);
        assert_eq!(
            v.items[1],
            Inner {
                a: 2,
                b: Some(true)
            }
        );
        assert_eq!(v.e, Some(Kind::Other));
    }

    #[test]
    fn collects_every_error() {
        let text = "n: x\nitems:\n  - a: lots\n  - {a: 2, c: 1}\n  - {}\ne: one\nz: 1\n";
        let doc = parse(text).unwrap();
        let (v, errors) = deserialize_all::<Outer>(doc.root.as_ref().unwrap());
        // What is left after removing the bad entries.
        assert_eq!(v.unwrap().items, [Inner { a: 2, b: None }]);
        let found: Vec<(String, String)> = errors
            .iter()
            .map(|e| (doc.key(e.at.unwrap()), e.to_string()))
            .collect();
        assert_eq!(
            found,
            [
                ("n".to_string(), "must be a number, found `x`".to_string()),
                (
                    "items.0.a".into(),
                    "must be a non-negative integer, found `lots`".into()
                ),
                ("items.1.c".into(), "unknown key `c`".into()),
                ("items.2".into(), "missing key `a`".into()),
                ("e".into(), "unknown value `one`".into()),
                ("z".into(), "unknown key `z`".into()),
            ]
        );
    }
}
