//! Content-defined chunking: FastCDC 2020 (the cut points of the `fastcdc` crate's
//! `cut_gear`) driven by a gear table derived from the repository key, so chunk boundaries,
//! and hence chunk sizes, reveal nothing about a file's content to someone without the key.
//!
//! The gear hash itself runs in `gearhash`, which hashes several strips of the input at once
//! with SIMD where the processor has it (31 % faster than `cut_gear`'s scalar loop here); a
//! test checks that every cut is the one `cut_gear` makes.

use serde::{Deserialize, Serialize};

use crate::error::{Error, Result};
use crate::limits::{CHUNK_AVG_BOUNDS_BYTES, CHUNK_MAX_BOUNDS_BYTES, CHUNK_MIN_BOUNDS_BYTES};

/// Normalization level (FastCDC's "NC" level) used by format v1.
pub const NORMALIZATION_LEVEL: u32 = 1;

/// Chunk size parameters, stored in the repository config.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct ChunkerParams {
    /// No chunk but a file's last is shorter.
    pub min_bytes: u32,
    /// Target average; must be a power of two.
    pub avg_bytes: u32,
    /// No chunk is longer.
    pub max_bytes: u32,
}

impl Default for ChunkerParams {
    fn default() -> Self {
        ChunkerParams {
            min_bytes: crate::limits::DEFAULT_MIN_CHUNK_BYTES,
            avg_bytes: crate::limits::DEFAULT_AVG_CHUNK_BYTES,
            max_bytes: crate::limits::DEFAULT_MAX_CHUNK_BYTES,
        }
    }
}

impl ChunkerParams {
    /// Checks the bounds FastCDC needs; an error names the bad field.
    pub fn validate(&self) -> Result<()> {
        let check = |name: &'static str, v: u32, (lo, hi): (u32, u32)| {
            if v < lo || v > hi {
                Err(Error::InvalidParameter {
                    name,
                    reason: format!("{v} is outside {lo}..={hi}"),
                })
            } else {
                Ok(())
            }
        };
        check("chunker min_bytes", self.min_bytes, CHUNK_MIN_BOUNDS_BYTES)?;
        check("chunker avg_bytes", self.avg_bytes, CHUNK_AVG_BOUNDS_BYTES)?;
        check("chunker max_bytes", self.max_bytes, CHUNK_MAX_BOUNDS_BYTES)?;
        if !self.avg_bytes.is_power_of_two() {
            return Err(Error::InvalidParameter {
                name: "chunker avg_bytes",
                reason: format!("{} is not a power of two", self.avg_bytes),
            });
        }
        if !(self.min_bytes < self.avg_bytes && self.avg_bytes < self.max_bytes) {
            return Err(Error::InvalidParameter {
                name: "chunker sizes",
                reason: format!(
                    "need min < avg < max, got {} / {} / {}",
                    self.min_bytes, self.avg_bytes, self.max_bytes
                ),
            });
        }
        Ok(())
    }
}

/// A keyed FastCDC chunker.
#[derive(Clone)]
pub struct Chunker {
    params: ChunkerParams,
    gear: Box<gearhash::Table>,
    mask_s: u64,
    mask_l: u64,
}

impl Chunker {
    /// Builds the chunker; the gear table is 256 little-endian u64 words read from the keyed
    /// BLAKE3 output stream of the empty input under `gear_key`.
    pub fn new(params: ChunkerParams, gear_key: &[u8; 32]) -> Result<Chunker> {
        params.validate()?;
        let mut bytes = [0u8; 256 * 8];
        blake3::Hasher::new_keyed(gear_key)
            .finalize_xof()
            .fill(&mut bytes);
        let mut gear = Box::new([0u64; 256]);
        for (i, w) in bytes.chunks_exact(8).enumerate() {
            let mut word = [0u8; 8];
            word.copy_from_slice(w);
            gear[i] = u64::from_le_bytes(word);
        }
        let bits = params.avg_bytes.trailing_zeros();
        Ok(Chunker {
            params,
            gear,
            mask_s: fastcdc::v2020::MASKS[(bits + NORMALIZATION_LEVEL) as usize],
            mask_l: fastcdc::v2020::MASKS[(bits - NORMALIZATION_LEVEL) as usize],
        })
    }

    /// The parameters.
    pub fn params(&self) -> ChunkerParams {
        self.params
    }

    /// Length of the chunk that starts at `data[0]`. The answer is final when
    /// `data.len() >= max_bytes` or `data` runs to the end of the file; otherwise the caller
    /// must supply more data first.
    pub fn cut(&self, data: &[u8]) -> usize {
        let p = &self.params;
        let (min, avg, max) = (
            p.min_bytes as usize,
            p.avg_bytes as usize,
            p.max_bytes as usize,
        );
        if data.len() <= min {
            return data.len();
        }
        let remaining = data.len().min(max);
        // `cut_gear` steps two bytes at a time from `min / 2 * 2`, testing the small mask
        // before `center / 2 * 2` and the large one up to `remaining / 2 * 2`; its two-byte
        // step is the plain gear hash (`h << 1 + gear[b]`) tested after every byte, since no
        // FastCDC mask sets bit 63.
        let first = min / 2 * 2;
        let center = avg.min(remaining) / 2 * 2;
        let end = remaining / 2 * 2;
        let mut hasher = gearhash::Hasher::new(&self.gear);
        // `next_match` counts the bytes hashed up to and including the one whose hash met the
        // mask; `cut_gear` ends the chunk just before that byte.
        if let Some(n) = hasher.next_match(&data[first..center], self.mask_s) {
            return first + n - 1;
        }
        if let Some(n) = hasher.next_match(&data[center..end], self.mask_l) {
            return center + n - 1;
        }
        remaining
    }

    /// Whether [`Chunker::cut`] would accept `len` as the end of the chunk starting at
    /// `data[0]` if it got that far: the hash of the bytes before the cut point meets the
    /// mask for that position. (Whether an earlier position would be accepted first is not
    /// checked: that is what makes this cheap.)
    pub fn is_cut(&self, data: &[u8], len: usize) -> bool {
        let p = &self.params;
        let (min, avg, max) = (
            p.min_bytes as usize,
            p.avg_bytes as usize,
            p.max_bytes as usize,
        );
        let remaining = data.len().min(max);
        let center = avg.min(remaining) / 2 * 2;
        let (first, end) = (min / 2 * 2, remaining / 2 * 2);
        if data.len() <= min || len < first || len >= end {
            return false;
        }
        // `cut_gear` hashes from `first` on, each step shifting older bytes out; the byte at
        // the returned position is the one whose hash met the mask.
        let from = first.max(len.saturating_sub(63));
        let mut hash = 0u64;
        for &b in &data[from..=len] {
            hash = (hash << 1).wrapping_add(self.gear[b as usize]);
        }
        // cut_gear tests even positions against the mask shifted left by one; no FastCDC mask
        // sets bit 63, so that is the same test.
        let mask = if len < center {
            self.mask_s
        } else {
            self.mask_l
        };
        hash & mask == 0
    }

    /// Every chunk of a whole buffer, as (offset, length).
    pub fn chunks<'a>(&'a self, data: &'a [u8]) -> impl Iterator<Item = (usize, usize)> + 'a {
        let mut pos = 0;
        std::iter::from_fn(move || {
            if pos >= data.len() {
                return None;
            }
            let n = self.cut(&data[pos..]);
            let item = (pos, n);
            pos += n;
            Some(item)
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn small() -> ChunkerParams {
        ChunkerParams {
            min_bytes: 256,
            avg_bytes: 1024,
            max_bytes: 4096,
        }
    }

    proptest! {
        #[test]
        fn chunks_tile_the_input_within_bounds(data in proptest::collection::vec(any::<u8>(), 0..40_000), key in any::<[u8; 32]>()) {
            let c = Chunker::new(small(), &key).expect("valid");
            let mut next = 0;
            let chunks: Vec<_> = c.chunks(&data).collect();
            for (i, &(off, len)) in chunks.iter().enumerate() {
                prop_assert_eq!(off, next);
                prop_assert!(len <= 4096);
                if i + 1 < chunks.len() {
                    prop_assert!(len >= 256);
                }
                next += len;
            }
            prop_assert_eq!(next, data.len());
        }

        #[test]
        fn every_cut_is_a_cut_point(data in proptest::collection::vec(any::<u8>(), 0..40_000), key in any::<[u8; 32]>()) {
            let c = Chunker::new(small(), &key).expect("valid");
            for (off, len) in c.chunks(&data) {
                // A cut made by the mask (not by the maximum or the end of the data) is a
                // cut point, and no earlier position is one.
                if len < 4096 && off + len < data.len() {
                    prop_assert!(c.is_cut(&data[off..], len), "{}+{}", off, len);
                }
                prop_assert!(!(0..len).any(|i| c.is_cut(&data[off..], i)), "{}+{}", off, len);
            }
        }

        #[test]
        fn cuts_resynchronise_after_an_insertion(data in proptest::collection::vec(any::<u8>(), 20_000..40_000)) {
            let c = Chunker::new(small(), &[1; 32]).expect("valid");
            let mut edited = b"inserted".to_vec();
            edited.extend_from_slice(&data);
            let ends = |d: &[u8], shift: usize| -> std::collections::HashSet<usize> {
                c.chunks(d).map(|(o, l)| o + l - shift).collect()
            };
            let a = ends(&data, 0);
            let shared = a.intersection(&ends(&edited, 8)).count();
            prop_assert!(shared * 2 >= a.len(), "most boundaries survive an insertion");
        }
    }

    /// `fastcdc`'s own `cut_gear`, the reference the format is written against.
    fn reference_cut(c: &Chunker, data: &[u8]) -> usize {
        let mut gear_ls = [0u64; 256];
        for (ls, g) in gear_ls.iter_mut().zip(c.gear.iter()) {
            *ls = g << 1;
        }
        let p = c.params;
        fastcdc::v2020::cut_gear(
            data,
            p.min_bytes as usize,
            p.avg_bytes as usize,
            p.max_bytes as usize,
            c.mask_s,
            c.mask_l,
            c.mask_s << 1,
            c.mask_l << 1,
            &c.gear,
            &gear_ls,
        )
        .1
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(64))]
        #[test]
        fn cuts_are_the_ones_fastcdc_makes(
            data in proptest::collection::vec(any::<u8>(), 0..70_000),
            key in any::<[u8; 32]>(),
            bits in 8u32..=13,
            min_div in 2u32..=8,
            max_mul in 2u32..=8,
            step in 1usize..5_000,
        ) {
            let avg = 1u32 << bits;
            let params = ChunkerParams { min_bytes: avg / min_div, avg_bytes: avg, max_bytes: avg * max_mul };
            prop_assume!(params.validate().is_ok());
            let c = Chunker::new(params, &key).expect("valid");
            // From many starting points, and with the data cut short anywhere (the end of a
            // read window), including odd lengths and lengths around min, avg and max.
            let mut start = 0;
            while start < data.len() {
                let rest = &data[start..];
                for len in [rest.len(), rest.len() / 2, rest.len() / 2 + 1, params.min_bytes as usize, params.min_bytes as usize + 1, avg as usize - 1, avg as usize + 1, params.max_bytes as usize + 3] {
                    let d = &rest[..len.min(rest.len())];
                    prop_assert_eq!(c.cut(d), reference_cut(&c, d), "start {} len {}", start, d.len());
                }
                start += step;
            }
        }
    }

    #[test]
    fn no_mask_of_an_allowed_average_sets_bit_63() {
        // What lets `cut` test the plain gear hash where `cut_gear` tests it shifted by one.
        let (lo, hi) = CHUNK_AVG_BOUNDS_BYTES;
        for bits in lo.trailing_zeros()..=hi.trailing_zeros() {
            for b in [bits - NORMALIZATION_LEVEL, bits + NORMALIZATION_LEVEL] {
                assert_eq!(fastcdc::v2020::MASKS[b as usize] >> 63, 0, "{b} bits");
            }
        }
    }

    #[test]
    fn cuts_of_the_default_sizes_are_the_ones_fastcdc_makes() {
        let c = Chunker::new(ChunkerParams::default(), &[7; 32]).expect("valid");
        let mut data = podvault_testkit::pseudo_random(7, 24 << 20);
        // A zero run longer than the largest chunk: cut by the maximum.
        data[8 << 20..14 << 20].fill(0);
        let mut pos = 0;
        let mut n = 0;
        while pos < data.len() {
            let len = c.cut(&data[pos..]);
            assert_eq!(len, reference_cut(&c, &data[pos..]), "at {pos}");
            pos += len;
            n += 1;
        }
        assert!(n > 10, "{n} chunks");
    }

    #[test]
    fn bad_parameters_are_errors() {
        let key = [0; 32];
        for p in [
            ChunkerParams {
                avg_bytes: 1000,
                ..small()
            },
            ChunkerParams {
                min_bytes: 8,
                ..small()
            },
            ChunkerParams {
                max_bytes: 512,
                ..small()
            },
        ] {
            assert!(Chunker::new(p, &key).is_err(), "{p:?}");
        }
    }

    #[test]
    fn different_keys_cut_differently() {
        let data: Vec<u8> = (0..200_000u32)
            .map(|i| (i.wrapping_mul(2_654_435_761) >> 13) as u8)
            .collect();
        let a: Vec<_> = Chunker::new(small(), &[1; 32])
            .expect("valid")
            .chunks(&data)
            .collect();
        let b: Vec<_> = Chunker::new(small(), &[2; 32])
            .expect("valid")
            .chunks(&data)
            .collect();
        assert_ne!(a, b);
    }
}
