//! Trace and span ids.

use std::fmt;

use serde::{Deserialize, Deserializer, Serialize, Serializer};

macro_rules! hex_id {
    ($name:ident, $len:expr, $doc:expr) => {
        #[doc = $doc]
        #[derive(Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Default)]
        pub struct $name(pub [u8; $len]);

        /// Hashed as whole words rather than a length and a byte slice: ids are keys of
        /// the per-trace maps every span goes through. Consistent with `Eq` (the words
        /// are the bytes).
        impl std::hash::Hash for $name {
            #[inline]
            fn hash<H: std::hash::Hasher>(&self, state: &mut H) {
                for w in self.0.chunks_exact(8) {
                    let mut b = [0u8; 8];
                    b.copy_from_slice(w);
                    state.write_u64(u64::from_le_bytes(b));
                }
            }
        }

        impl $name {
            /// Byte length of the id.
            pub const LEN: usize = $len;

            /// The id from a byte slice of exactly [`Self::LEN`] bytes.
            pub fn from_slice(b: &[u8]) -> Option<Self> {
                <[u8; $len]>::try_from(b).ok().map($name)
            }

            /// True when every byte is zero (the OTLP "invalid id").
            pub fn is_zero(&self) -> bool {
                self.0.iter().all(|b| *b == 0)
            }

            /// Lower-case hex, as OTLP JSON and every tracing UI shows it.
            pub fn to_hex(&self) -> String {
                hex::encode(self.0)
            }

            /// Parses lower- or upper-case hex of the right length.
            pub fn from_hex(s: &str) -> Option<Self> {
                let mut out = [0u8; $len];
                hex::decode_to_slice(s, &mut out).ok()?;
                Some($name(out))
            }
        }

        impl fmt::Debug for $name {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str(&self.to_hex())
            }
        }

        impl fmt::Display for $name {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str(&self.to_hex())
            }
        }

        /// Hex in text formats (JSON); the raw bytes in binary ones (checkpoints).
        impl Serialize for $name {
            fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
                if s.is_human_readable() {
                    s.serialize_str(&self.to_hex())
                } else {
                    self.0.serialize(s)
                }
            }
        }

        impl<'de> Deserialize<'de> for $name {
            fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
                if !d.is_human_readable() {
                    return <[u8; $len]>::deserialize(d).map($name);
                }
                let s = <std::borrow::Cow<'de, str>>::deserialize(d)?;
                $name::from_hex(&s)
                    .ok_or_else(|| serde::de::Error::custom(concat!("invalid ", stringify!($name))))
            }
        }
    };
}

hex_id!(TraceId, 16, "A 16-byte trace id.");
hex_id!(
    SpanId,
    8,
    "An 8-byte span id; all zeros means \"no parent\"."
);

impl TraceId {
    /// A well-mixed 64-bit hash of the id, used for shard routing and the
    /// probabilistic sampler. Trace ids are random already, but some SDKs and converters
    /// (e.g. the Alibaba traces) produce structured ids, so we mix anyway.
    pub fn hash64(&self) -> u64 {
        let hi = u64::from_le_bytes(self.0[..8].try_into().unwrap_or_default());
        let lo = u64::from_le_bytes(self.0[8..].try_into().unwrap_or_default());
        let mut x = hi ^ lo.rotate_left(29) ^ 0x9e37_79b9_7f4a_7c15;
        // splitmix64 finalizer
        x = (x ^ (x >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        x = (x ^ (x >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        x ^ (x >> 31)
    }

    /// The shard of `shards` this trace goes to (0 when there are none or one). The
    /// router and the decoders' per-shard attribute arenas must agree on it.
    #[inline]
    pub fn shard(&self, shards: usize) -> usize {
        if shards <= 1 {
            0
        } else {
            (self.hash64() % shards as u64) as usize
        }
    }
}
