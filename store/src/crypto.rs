//! Keys and sealing. Every primitive comes from `ring` (the crypto provider rustls uses) and
//! BLAKE3, except the password KDF, Argon2id, which `ring` lacks.

use ring::aead::{self, Aad, LessSafeKey, Nonce, UnboundKey};
use ring::hkdf;
use ring::rand::{SecureRandom, SystemRandom};
use serde::{Deserialize, Serialize};

use crate::error::{Error, Result};
use crate::limits::{NONCE_BYTES, SEAL_OVERHEAD_BYTES};

/// Salt of the HKDF that derives every subkey from the master key.
const HKDF_SALT: &[u8] = b"podvault repository v1";
const INFO_AEAD: &[u8] = b"podvault/v1/aead";
const INFO_BLOB_ID: &[u8] = b"podvault/v1/blob-id";
const INFO_GEAR: &[u8] = b"podvault/v1/gear";
const INFO_FAST_HASH: &[u8] = b"podvault/v1/fast-hash";
/// Additional data binding a key file's wrapped master key.
const KEY_FILE_AAD: &[u8] = b"podvault key v1";

/// Fills `buf` from the operating system's random source.
pub(crate) fn random_bytes(buf: &mut [u8]) -> Result<()> {
    SystemRandom::new()
        .fill(buf)
        .map_err(|_| Error::Crypto("the operating system's random source failed".into()))
}

/// Argon2id parameters of one key file (the repository config holds the defaults for new keys).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct KdfParams {
    /// Always "argon2id" in format v1.
    pub algorithm: String,
    /// Memory in KiB.
    pub memory_kib: u32,
    /// Number of passes.
    pub iterations: u32,
    /// Degree of parallelism (lanes).
    pub parallelism: u32,
}

impl Default for KdfParams {
    /// RFC 9106's second recommended option: 64 MiB, 3 passes, 4 lanes. The lanes are
    /// computed on as many threads as there are cores, so opening a key costs an attacker the
    /// same memory and passes per guess as one lane would, in about half the wall time here.
    fn default() -> Self {
        KdfParams {
            algorithm: "argon2id".into(),
            memory_kib: 64 * 1024,
            iterations: 3,
            parallelism: 4,
        }
    }
}

impl KdfParams {
    fn argon2(&self) -> Result<argon2::Argon2<'static>> {
        if self.algorithm != "argon2id" {
            return Err(Error::InvalidParameter {
                name: "kdf algorithm",
                reason: format!("{:?} is not supported (only argon2id)", self.algorithm),
            });
        }
        let params =
            argon2::Params::new(self.memory_kib, self.iterations, self.parallelism, Some(32))
                .map_err(|e| Error::InvalidParameter {
                    name: "kdf parameters",
                    reason: e.to_string(),
                })?;
        Ok(argon2::Argon2::new(
            argon2::Algorithm::Argon2id,
            argon2::Version::V0x13,
            params,
        ))
    }

    /// Derives a 32-byte key-encryption key from a password.
    pub(crate) fn derive(&self, password: &[u8], salt: &[u8]) -> Result<[u8; 32]> {
        let argon2 = self.argon2()?;
        let mut out = [0u8; 32];
        let filled = match HugeBlocks::map(self.memory_kib) {
            Some(mut blocks) => {
                argon2.hash_password_into_with_memory(password, salt, &mut out, blocks.blocks())
            }
            None => argon2.hash_password_into(password, salt, &mut out),
        };
        filled.map_err(|e| Error::Crypto(format!("argon2id: {e}")))?;
        Ok(out)
    }

    pub(crate) fn validate(&self) -> Result<()> {
        self.argon2().map(|_| ())
    }
}

/// Argon2id's memory, mapped with a request for transparent huge pages. Its blocks are
/// filled at random offsets: with 4 KiB pages, 64 MiB meant 16,384 page faults and as many
/// TLB misses, a third of the time to open a key (measured: 91 -> 58 ms for 64 MiB, 3
/// passes, 4 lanes on 2 cores).
struct HugeBlocks(memmap2::MmapMut);

impl HugeBlocks {
    /// `None` when the mapping is refused; the caller then lets argon2 allocate.
    fn map(memory_kib: u32) -> Option<HugeBlocks> {
        let len = usize::try_from(memory_kib).ok()?.checked_mul(1024)?;
        let map = memmap2::MmapMut::map_anon(len).ok()?;
        // Only a hint: without huge pages (or on other systems) the blocks work the same.
        #[cfg(target_os = "linux")]
        let _ = map.advise(memmap2::Advice::HugePage);
        Some(HugeBlocks(map))
    }

    #[allow(unsafe_code)]
    fn blocks(&mut self) -> &mut [argon2::Block] {
        // SAFETY: a `Block` is `[u64; 128]` aligned to 64 bytes, for which every bit pattern
        // is valid, and `align_to_mut` only returns the suitably aligned middle; the mapping
        // is page-aligned and its length a multiple of 1 KiB, so the middle is all of it,
        // and argon2 checks that it holds as many blocks as the parameters need.
        let (_, blocks, _) = unsafe { self.0.align_to_mut::<argon2::Block>() };
        blocks
    }
}

/// A key file as stored under `keys/`: the master key wrapped by a password-derived key.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub(crate) struct KeyFile {
    pub version: u32,
    pub created: chrono::DateTime<chrono::Utc>,
    pub host: String,
    pub username: String,
    pub kdf: KdfParams,
    /// Hex of the 16-byte Argon2id salt.
    pub salt: String,
    /// Hex of nonce ‖ AES-256-GCM(master key) ‖ tag.
    pub master_key: String,
}

impl KeyFile {
    pub(crate) fn wrap(master: &MasterKey, password: &[u8], kdf: &KdfParams) -> Result<KeyFile> {
        let mut salt = [0u8; 16];
        random_bytes(&mut salt)?;
        let kek = kdf.derive(password, &salt)?;
        let sealer = Sealer::new(&kek)?;
        let wrapped = sealer.seal(KEY_FILE_AAD, &master.0)?;
        Ok(KeyFile {
            version: crate::limits::FORMAT_VERSION,
            created: chrono::Utc::now(),
            host: crate::snapshot::hostname(),
            username: crate::snapshot::username(),
            kdf: kdf.clone(),
            salt: hex::encode(salt),
            master_key: hex::encode(wrapped),
        })
    }

    /// Returns the master key if the password opens this key file, `Ok(None)` if it does not.
    pub(crate) fn unwrap_key(&self, password: &[u8], name: &str) -> Result<Option<MasterKey>> {
        let salt = hex::decode(&self.salt)
            .map_err(|e| Error::corrupt("key", name, format!("salt: {e}")))?;
        let wrapped = hex::decode(&self.master_key)
            .map_err(|e| Error::corrupt("key", name, format!("master_key: {e}")))?;
        let kek = self.kdf.derive(password, &salt)?;
        let sealer = Sealer::new(&kek)?;
        match sealer.open(KEY_FILE_AAD, &wrapped) {
            Ok(plain) => {
                let bytes: [u8; 32] = plain
                    .as_slice()
                    .try_into()
                    .map_err(|_| Error::corrupt("key", name, "master key is not 32 bytes"))?;
                Ok(Some(MasterKey(bytes)))
            }
            Err(_) => Ok(None),
        }
    }
}

/// The repository's random 256-bit master key. Never stored in the clear.
pub(crate) struct MasterKey(pub(crate) [u8; 32]);

impl MasterKey {
    pub(crate) fn generate() -> Result<MasterKey> {
        let mut k = [0u8; 32];
        random_bytes(&mut k)?;
        Ok(MasterKey(k))
    }

    fn expand(&self, info: &[u8]) -> Result<[u8; 32]> {
        struct Len32;
        impl hkdf::KeyType for Len32 {
            fn len(&self) -> usize {
                32
            }
        }
        let prk = hkdf::Salt::new(hkdf::HKDF_SHA256, HKDF_SALT).extract(&self.0);
        let info = [info];
        let okm = prk
            .expand(&info, Len32)
            .map_err(|_| Error::Crypto("hkdf expand".into()))?;
        let mut out = [0u8; 32];
        okm.fill(&mut out)
            .map_err(|_| Error::Crypto("hkdf fill".into()))?;
        Ok(out)
    }

    /// Derives every subkey the repository uses.
    pub(crate) fn derive(&self) -> Result<Keys> {
        Ok(Keys {
            sealer: Sealer::new(&self.expand(INFO_AEAD)?)?,
            blob_id_key: self.expand(INFO_BLOB_ID)?,
            gear_key: self.expand(INFO_GEAR)?,
            fast_hash_key: self.expand(INFO_FAST_HASH)?,
        })
    }
}

/// Subkeys derived from the master key with HKDF-SHA256.
pub(crate) struct Keys {
    pub sealer: Sealer,
    pub blob_id_key: [u8; 32],
    pub gear_key: [u8; 32],
    pub fast_hash_key: [u8; 32],
}

/// AES-256-GCM with a random 96-bit nonce per message: `nonce ‖ ciphertext ‖ tag`.
pub(crate) struct Sealer {
    key: LessSafeKey,
}

impl Sealer {
    pub(crate) fn new(key: &[u8; 32]) -> Result<Sealer> {
        let unbound = UnboundKey::new(&aead::AES_256_GCM, key)
            .map_err(|_| Error::Crypto("AES-256-GCM key".into()))?;
        Ok(Sealer {
            key: LessSafeKey::new(unbound),
        })
    }

    /// Seals `plaintext`, binding `aad` (which is authenticated, not stored).
    pub(crate) fn seal(&self, aad: &[u8], plaintext: &[u8]) -> Result<Vec<u8>> {
        let mut out = Vec::new();
        self.seal_into(aad, plaintext, &mut out)?;
        Ok(out)
    }

    /// Seals `plaintext` into `out` (cleared first), reusing its allocation.
    pub(crate) fn seal_into(&self, aad: &[u8], plaintext: &[u8], out: &mut Vec<u8>) -> Result<()> {
        out.clear();
        self.seal_append(aad, plaintext, out)
    }

    /// Appends the sealed form of `plaintext` to `out`.
    pub(crate) fn seal_append(
        &self,
        aad: &[u8],
        plaintext: &[u8],
        out: &mut Vec<u8>,
    ) -> Result<()> {
        let start = out.len();
        out.reserve(plaintext.len() + SEAL_OVERHEAD_BYTES);
        let mut nonce = [0u8; NONCE_BYTES];
        random_bytes(&mut nonce)?;
        out.extend_from_slice(&nonce);
        out.extend_from_slice(plaintext);
        let tag = self.key.seal_in_place_separate_tag(
            Nonce::assume_unique_for_key(nonce),
            Aad::from(aad),
            &mut out[start + NONCE_BYTES..],
        );
        match tag {
            Ok(tag) => {
                out.extend_from_slice(tag.as_ref());
                Ok(())
            }
            Err(_) => {
                out.truncate(start);
                Err(Error::Crypto("seal".into()))
            }
        }
    }

    /// Opens a sealed message where it lies; returns where the plaintext now is in `buf`.
    pub(crate) fn open_in_place(
        &self,
        aad: &[u8],
        buf: &mut [u8],
    ) -> Result<std::ops::Range<usize>, ()> {
        if buf.len() < SEAL_OVERHEAD_BYTES {
            return Err(());
        }
        let nonce: [u8; NONCE_BYTES] = buf[..NONCE_BYTES].try_into().map_err(|_| ())?;
        let len = self
            .key
            .open_in_place(
                Nonce::assume_unique_for_key(nonce),
                Aad::from(aad),
                &mut buf[NONCE_BYTES..],
            )
            .map_err(|_| ())?
            .len();
        Ok(NONCE_BYTES..NONCE_BYTES + len)
    }

    /// Opens a sealed message; `Err(())` when it was damaged, forged or sealed with another key.
    pub(crate) fn open(&self, aad: &[u8], sealed: &[u8]) -> Result<Vec<u8>, ()> {
        let mut buf = sealed.to_vec();
        let range = self.open_in_place(aad, &mut buf)?;
        buf.truncate(range.end);
        buf.drain(..range.start);
        Ok(buf)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn seal_open_round_trip_and_tamper() {
        let s = Sealer::new(&[7u8; 32]).expect("key");
        let sealed = s.seal(b"ctx", b"hello world").expect("seal");
        assert_eq!(s.open(b"ctx", &sealed).expect("open"), b"hello world");
        assert!(s.open(b"other", &sealed).is_err());
        let mut bad = sealed.clone();
        bad[NONCE_BYTES + 1] ^= 1;
        assert!(s.open(b"ctx", &bad).is_err());
        assert!(s.open(b"ctx", &sealed[..5]).is_err());
    }

    #[test]
    fn key_file_wraps_and_rejects_wrong_password() {
        let kdf = KdfParams {
            memory_kib: 64,
            iterations: 1,
            ..KdfParams::default()
        };
        let mk = MasterKey::generate().expect("rng");
        let kf = KeyFile::wrap(&mk, b"right", &kdf).expect("wrap");
        let got = kf.unwrap_key(b"right", "k").expect("ok").expect("opens");
        assert_eq!(got.0, mk.0);
        assert!(kf.unwrap_key(b"wrong", "k").expect("ok").is_none());
    }
}

#[cfg(test)]
mod golden {
    use super::*;

    /// The HKDF labels are part of the format: a fixed master key must always give the same
    /// blob ids and gear table.
    #[test]
    fn subkeys_of_a_fixed_master_key_never_change() {
        let keys = MasterKey([1u8; 32]).derive().expect("derive");
        let id = blake3::keyed_hash(&keys.blob_id_key, b"podvault");
        assert_eq!(id.to_hex().as_str(), GOLDEN_BLOB_ID);
        assert_eq!(hex::encode(keys.gear_key), GOLDEN_GEAR_KEY);
    }

    /// The password KDF is part of the format too: key files written with one or four lanes
    /// must open with every later build (the lanes may be computed in parallel or not).
    #[test]
    fn argon2id_of_a_fixed_password_never_changes() {
        for (lanes, golden) in [(1, GOLDEN_KEK_1_LANE), (4, GOLDEN_KEK_4_LANES)] {
            let kdf = KdfParams {
                memory_kib: 1024,
                iterations: 3,
                parallelism: lanes,
                ..KdfParams::default()
            };
            let kek = kdf.derive(b"password", &[9u8; 16]).expect("derive");
            assert_eq!(hex::encode(kek), golden, "{lanes} lanes");
        }
    }

    /// FORMAT.md gives the same vectors, for other implementations.
    #[test]
    fn the_format_document_gives_these_vectors() {
        let doc = include_str!("../FORMAT.md");
        for golden in [
            GOLDEN_KEK_1_LANE,
            GOLDEN_KEK_4_LANES,
            GOLDEN_BLOB_ID,
            GOLDEN_GEAR_KEY,
        ] {
            assert!(doc.contains(golden), "FORMAT.md lacks {golden}");
        }
    }

    const GOLDEN_KEK_1_LANE: &str =
        "611760b97bd8bee8d24105020540c51f3adaf280cef712a1bab879bbe015e4a7";
    const GOLDEN_KEK_4_LANES: &str =
        "a61de6b32b0b70faa3f125eda64c4f7346cad2a7dcbc32d5665e5b8481610b85";
    const GOLDEN_BLOB_ID: &str = "a0685390380dbfe67b1ea49514caeb187d95e69c8bd03823651cbedc85410f9f";
    const GOLDEN_GEAR_KEY: &str =
        "529bd5a2fa5586dfcd4785faf6d15cd47fbcbe7487459e529fa3042c812044ac";
}
