//! Typed 32-byte identifiers. `Display` prints the full hex; [`short`](BlobId::short) an
//! 8-character prefix for humans.

use std::fmt;

use serde::{Deserialize, Deserializer, Serialize, Serializer};

macro_rules! define_id {
    ($(#[$doc:meta])* $name:ident) => {
        $(#[$doc])*
        #[derive(Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
        pub struct $name([u8; 32]);

        impl $name {
            /// Wraps raw bytes.
            pub const fn from_bytes(bytes: [u8; 32]) -> Self {
                Self(bytes)
            }

            /// The raw bytes.
            pub fn as_bytes(&self) -> &[u8; 32] {
                &self.0
            }

            /// Full lowercase hex, as used in file names.
            pub fn to_hex(&self) -> String {
                hex::encode(self.0)
            }

            /// The first 8 hex digits, for humans.
            pub fn short(&self) -> String {
                hex::encode(&self.0[..4])
            }

            /// Parses 64 hex digits.
            pub fn from_hex(s: &str) -> Option<Self> {
                let mut out = [0u8; 32];
                hex::decode_to_slice(s, &mut out).ok()?;
                Some(Self(out))
            }

            /// Parses a slice of exactly 32 bytes.
            pub fn from_slice(s: &[u8]) -> Option<Self> {
                Some(Self(s.try_into().ok()?))
            }
        }

        impl fmt::Display for $name {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str(&self.to_hex())
            }
        }

        impl fmt::Debug for $name {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                write!(f, "{}({})", stringify!($name), self.short())
            }
        }

        impl Serialize for $name {
            fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
                if s.is_human_readable() {
                    s.serialize_str(&self.to_hex())
                } else {
                    s.serialize_bytes(&self.0)
                }
            }
        }

        impl<'de> Deserialize<'de> for $name {
            fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
                if d.is_human_readable() {
                    let s = String::deserialize(d)?;
                    Self::from_hex(&s).ok_or_else(|| serde::de::Error::custom("expected 64 hex digits"))
                } else {
                    let b = serde_bytes::ByteBuf::deserialize(d)?;
                    Self::from_slice(&b).ok_or_else(|| serde::de::Error::custom("expected 32 bytes"))
                }
            }
        }
    };
}

define_id!(
    /// Keyed BLAKE3 of a blob's plaintext.
    BlobId
);
define_id!(
    /// The id of a tree blob (a [`BlobId`] of kind tree).
    TreeId
);
define_id!(
    /// BLAKE3 of a pack file's bytes.
    PackId
);
define_id!(
    /// BLAKE3 of an index file's bytes.
    IndexId
);
define_id!(
    /// BLAKE3 of a snapshot file's bytes.
    SnapshotId
);
define_id!(
    /// BLAKE3 of a key file's bytes.
    KeyId
);

impl From<TreeId> for BlobId {
    fn from(t: TreeId) -> Self {
        BlobId(t.0)
    }
}

impl From<BlobId> for TreeId {
    fn from(b: BlobId) -> Self {
        TreeId(b.0)
    }
}
