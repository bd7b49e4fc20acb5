//! The compact span model every operator works on.
//!
//! A span is decoded once (see the `formats` module of the `spanflow` crate) into
//! [`Span`]: fixed-size ids, interned strings, the handful of attributes operators read
//! as typed fields, and everything else packed into one [`Attrs`] buffer for the sinks.

mod attrs;
pub mod codec;
mod ids;
mod span;
mod sym;
pub mod wire;

pub use attrs::*;
pub use ids::*;
pub use span::*;
pub use sym::*;

#[cfg(test)]
mod tests {
    use super::attrs::{ENTRY_RESOURCE, ENTRY_SPAN, VALUE_INT, VALUE_STR};
    use super::sym::front_slot;
    use super::*;
    use proptest::prelude::*;

    fn arb_text() -> impl Strategy<Value = Vec<u8>> {
        prop_oneof![
            "[a-z.]{0,8}".prop_map(String::into_bytes),
            "\\PC{0,4}".prop_map(String::into_bytes),
            prop::collection::vec(any::<u8>(), 0..6),
        ]
    }

    proptest! {
        /// The short-entry fast path of `AttrIter` reads exactly what the general parse
        /// (and the standard UTF-8 validator) reads, for valid and invalid text alike.
        #[test]
        fn short_entries_read_like_the_general_parse(
            key in arb_text(),
            text in arb_text(),
            int in prop::option::of(any::<i64>()),
            resource in any::<bool>(),
        ) {
            let value = match int {
                Some(i) => {
                    let mut v = vec![VALUE_INT];
                    let mut x = i as u64;
                    while x >= 0x80 {
                        v.push((x as u8) | 0x80);
                        x >>= 7;
                    }
                    v.push(x as u8);
                    v
                }
                None => [vec![VALUE_STR, text.len() as u8], text.clone()].concat(),
            };
            let body = [
                vec![0x0a, key.len() as u8],
                key.clone(),
                vec![0x12, value.len() as u8],
                value,
            ]
            .concat();
            let tag = if resource { ENTRY_RESOURCE } else { ENTRY_SPAN };
            let buf = [vec![tag, body.len() as u8], body.clone()].concat();
            let attrs = Attrs(buf.into());
            let got: Vec<_> = attrs.iter().collect();
            let want = canonical_key_value(&body).and_then(|(k, v)| {
                let v = match v {
                    WireValue::Str(t) => AttrValue::Str(std::str::from_utf8(t).ok()?),
                    WireValue::Int(i) => AttrValue::Int(i),
                    _ => return None,
                };
                Some((std::str::from_utf8(k).ok()?, v, resource))
            });
            prop_assert_eq!(got, want.into_iter().collect::<Vec<_>>());
        }
    }

    proptest! {
        /// Attributes stored in an arena read exactly as their own buffers do, whatever
        /// the chunk size, and stay valid after the arena and every other handle to
        /// their chunk are gone; distinct ones never look like the same buffer.
        #[test]
        fn arena_attrs_read_like_their_own_buffers(
            spans in prop::collection::vec(
                prop::collection::vec(("[a-z.]{1,12}", "\\PC{0,24}", any::<bool>()), 0..6),
                1..40,
            ),
            first in 1usize..300,
            max in 1usize..600,
        ) {
            let mut arena = AttrArena::new(first, max);
            let mut b = AttrsBuilder::default();
            let mut stored = Vec::new();
            for entries in &spans {
                for (k, v, res) in entries {
                    b.push(k, AttrValue::Str(v), *res);
                }
                let own = {
                    let mut c = AttrsBuilder::default();
                    for (k, v, res) in entries {
                        c.push(k, AttrValue::Str(v), *res);
                    }
                    c.finish()
                };
                stored.push((b.finish_in(&mut arena), own));
            }
            drop(arena);
            // Every other handle of a chunk goes before the ones checked last.
            let keep: Vec<_> = stored.into_iter().rev().step_by(2).collect();
            for (i, (a, own)) in keep.iter().enumerate() {
                prop_assert_eq!(a, own);
                prop_assert_eq!(a.iter().collect::<Vec<_>>(), own.iter().collect::<Vec<_>>());
                prop_assert!(a.same_buffer(&a.clone()));
                for (b, _) in keep.iter().skip(i + 1) {
                    if !a.is_empty() && !b.is_empty() {
                        prop_assert!(!a.same_buffer(b));
                        prop_assert_ne!(a.buffer_address(), b.buffer_address());
                    }
                }
                let moved = a.clone().moved_to(&mut AttrArena::new(first, max));
                prop_assert_eq!(&moved, own);
            }
        }
    }

    #[test]
    fn sym_roundtrip_and_order() {
        let a = Sym::new("checkout");
        let b = Sym::new("api-gateway");
        assert_eq!(a, Sym::new("checkout"));
        assert_eq!(a.as_str(), "checkout");
        assert!(b < a, "orders by text");
        assert!(Sym::empty().is_empty());
        let json = serde_json::to_string(&a).unwrap();
        assert_eq!(json, "\"checkout\"");
        let back: Sym = serde_json::from_str(&json).unwrap();
        assert_eq!(back, a);
    }

    #[test]
    fn sym_front_cache_slot_collisions_keep_the_right_text() {
        // Same length, first and last eight bytes: the same front-cache slot.
        let a = "GET /api/v1/aaaa/orders/{id}";
        let b = "GET /api/v1/bbbb/orders/{id}";
        assert_eq!(front_slot(a.as_bytes()), front_slot(b.as_bytes()));
        for _ in 0..3 {
            assert_eq!(Sym::new(a).as_str(), a);
            assert_eq!(Sym::new(b).as_str(), b);
        }
        assert_ne!(Sym::new(a), Sym::new(b));
        assert_eq!(Sym::new("ab").as_str(), "ab");
        assert_eq!(Sym::new("").as_str(), "");
    }

    #[test]
    fn ids_hex() {
        let t = TraceId::from_hex("0102030405060708090a0b0c0d0e0f10").unwrap();
        assert_eq!(t.0[0], 1);
        assert_eq!(t.to_hex(), "0102030405060708090a0b0c0d0e0f10");
        assert!(TraceId::from_hex("zz").is_none());
        assert!(SpanId::default().is_zero());
    }

    #[test]
    fn corrupt_checkpoint_attrs_are_rejected() {
        // tag str, key length 1, key 0xff (not UTF-8), value length 0
        let bad = serde_json::to_string(&[0u8, 1, 0, 0xff, 0, 0, 0, 0]).unwrap();
        assert!(serde_json::from_str::<Attrs>(&bad).is_err());
        let truncated = serde_json::to_string(&[0u8, 5, 0, b'a']).unwrap();
        assert!(serde_json::from_str::<Attrs>(&truncated).is_err());
        // KeyValue { key: "k", value: { string_value: "v" } } with a non-UTF-8 key
        let bad_key =
            serde_json::to_string(&[0x4au8, 8, 0x0a, 1, 0xff, 0x12, 3, 0x0a, 1, b'v']).unwrap();
        assert!(serde_json::from_str::<Attrs>(&bad_key).is_err());
        let good =
            serde_json::to_string(&[0x4au8, 8, 0x0a, 1, b'k', 0x12, 3, 0x0a, 1, b'v']).unwrap();
        let a: Attrs = serde_json::from_str(&good).unwrap();
        assert_eq!(a.get("k"), Some(AttrValue::Str("v")));
    }

    #[test]
    fn attrs_pack_unpack() {
        let mut b = AttrsBuilder::default();
        b.push("http.route", AttrValue::Str("/a/{id}"), false);
        b.push("retries", AttrValue::Int(-3), false);
        b.push("ok", AttrValue::Bool(true), false);
        b.push("ratio", AttrValue::Double(0.5), true);
        // `AnyValue { array_value: [int 1, int 2] }`
        let list = [0x2a, 8, 0x0a, 2, 0x18, 1, 0x0a, 2, 0x18, 2];
        b.push("list", AttrValue::Any(&list), false);
        let a = b.finish();
        assert!(b.is_empty());
        let all: Vec<_> = a.iter().collect();
        assert_eq!(all.len(), 5);
        assert_eq!(a.get("retries"), Some(AttrValue::Int(-3)));
        assert_eq!(all[3], ("ratio", AttrValue::Double(0.5), true));
        assert_eq!(all[4].1.to_string(), "[1,2]");
        let json = serde_json::to_string(&a).unwrap();
        let back: Attrs = serde_json::from_str(&json).unwrap();
        assert_eq!(back, a);
    }

    #[test]
    fn attrs_read_back_as_pushed_and_as_copied_from_the_wire() {
        let long = "é".repeat(200);
        let values = [
            AttrValue::Str("GET"),
            AttrValue::Str(&long),
            AttrValue::Str(""),
            AttrValue::Int(-7),
            AttrValue::Int(200),
            AttrValue::Bool(false),
            AttrValue::Double(-0.25),
            // `AnyValue { kvlist_value: { a: int 1 } }`
            AttrValue::Any(&[0x32, 9, 0x0a, 7, 0x0a, 1, b'a', 0x12, 2, 0x18, 1]),
        ];
        let mut b = AttrsBuilder::default();
        for (i, v) in values.iter().enumerate() {
            b.push(&format!("k{i}"), *v, i % 3 == 0);
        }
        let a = b.finish();
        let got: Vec<_> = a.iter().collect();
        assert_eq!(got.len(), values.len());
        for (i, (k, v, resource)) in got.into_iter().enumerate() {
            assert_eq!(k, format!("k{i}"));
            assert_eq!(v, values[i]);
            assert_eq!(resource, i % 3 == 0);
        }
        // The same bytes handed over as encoded fields, as the protobuf decoder does.
        let bytes: Vec<u8> = serde_json::from_str(&serde_json::to_string(&a).unwrap()).unwrap();
        let mut c = AttrsBuilder::default();
        c.push_encoded(&bytes[..5]);
        c.push_encoded(&bytes[5..]);
        assert_eq!(c.finish(), a);
    }

    #[test]
    fn attrs_truncate_long_values_at_char_boundary() {
        let mut b = AttrsBuilder::default();
        let long = "é".repeat(MAX_ATTR_VALUE_LEN);
        assert!(b.push("k", AttrValue::Str(&long), false));
        let a = b.finish();
        match a.get("k") {
            Some(AttrValue::Str(s)) => assert!(s.len() <= MAX_ATTR_VALUE_LEN && !s.is_empty()),
            other => panic!("unexpected {other:?}"),
        }
    }
}
