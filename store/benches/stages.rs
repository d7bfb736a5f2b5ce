//! Throughput of each backup stage alone: chunking, hashing, and the pack writer
//! (compress + seal + append), so a regression in one stage shows by itself.
//!
//!     cargo bench -p podvault-store --bench stages
//!
//! `PODVAULT_BENCH_SAMPLE=FILE` replaces the generated compressible input with the first
//! 16 MiB of a real file (a PostgreSQL relation, say).

use std::hint::black_box;
use std::sync::Arc;

use criterion::{BenchmarkId, Criterion, Throughput, criterion_group, criterion_main};
use podvault_store::{
    BlobId, BlobKind, ChunkerParams, DirBackend, InitOptions, KdfParams, Repository,
};

const MIB: usize = 1024 * 1024;

/// Deterministic incompressible bytes (xorshift).
fn random_bytes(len: usize, mut seed: u64) -> Vec<u8> {
    let mut out = Vec::with_capacity(len + 8);
    while out.len() < len {
        seed ^= seed << 13;
        seed ^= seed >> 7;
        seed ^= seed << 17;
        out.extend_from_slice(&seed.to_le_bytes());
    }
    out.truncate(len);
    out
}

/// Deterministic compressible bytes: words and numbers in rows, like a table or a log.
fn text_bytes(len: usize) -> Vec<u8> {
    if let Some(path) = std::env::var_os("PODVAULT_BENCH_SAMPLE") {
        let mut data = std::fs::read(&path).expect("PODVAULT_BENCH_SAMPLE readable");
        data.truncate(len);
        if data.len() == len {
            return data;
        }
    }
    const WORDS: &[&str] = &[
        "account",
        "balance",
        "branch",
        "teller",
        "history",
        "delta",
        "volume",
        "restore",
        "snapshot",
        "namespace",
        "pod",
        "node",
        "error",
        "ok",
        "null",
        "true",
        "false",
    ];
    let noise = random_bytes(len / 4 + 8, 7);
    let mut out = Vec::with_capacity(len + 64);
    let mut i = 0;
    while out.len() < len {
        let r = u16::from_le_bytes([noise[i % noise.len()], noise[(i + 1) % noise.len()]]);
        out.extend_from_slice(WORDS[r as usize % WORDS.len()].as_bytes());
        out.push(b' ');
        out.extend_from_slice((r % 1000).to_string().as_bytes());
        out.push(if r.is_multiple_of(7) { b'\n' } else { b'|' });
        i += 2;
    }
    out.truncate(len);
    out
}

fn repository(dir: &std::path::Path) -> Repository {
    let options = InitOptions {
        chunker: ChunkerParams::default(),
        kdf: KdfParams {
            memory_kib: 64,
            iterations: 1,
            ..KdfParams::default()
        },
    };
    Repository::init(
        Arc::new(DirBackend::new(dir.join("repo"))),
        b"bench",
        &options,
    )
    .expect("init")
}

fn chunker(c: &mut Criterion) {
    let tmp = tempfile::tempdir().expect("tmp");
    let repo = repository(tmp.path());
    let data = random_bytes(64 * MIB, 1);
    let mut g = c.benchmark_group("chunker");
    g.throughput(Throughput::Bytes(data.len() as u64));
    g.sample_size(20);
    g.bench_function("cut 64 MiB", |b| {
        b.iter(|| {
            let chunker = repo.chunker();
            let mut p = 0;
            let mut n = 0;
            while p < data.len() {
                p += chunker.cut(&data[p..]);
                n += 1;
            }
            black_box(n)
        })
    });
    g.finish();
}

fn hasher(c: &mut Criterion) {
    let tmp = tempfile::tempdir().expect("tmp");
    let repo = repository(tmp.path());
    let fast = repo.fast_hasher();
    let data = random_bytes(4 * MIB, 2);
    let mut g = c.benchmark_group("hasher");
    g.throughput(Throughput::Bytes(data.len() as u64));
    g.bench_function("keyed blake3 4 MiB", |b| {
        b.iter(|| black_box(repo.blob_id(&data)))
    });
    g.bench_function("keyed xxh3-128 4 MiB", |b| {
        b.iter(|| black_box(fast.hash(&data)))
    });
    g.finish();
}

fn pack_writer(c: &mut Criterion) {
    let inputs = [
        ("incompressible", random_bytes(16 * MIB, 3)),
        ("text", text_bytes(16 * MIB)),
        ("zeros", vec![0u8; 16 * MIB]),
    ];
    let mut g = c.benchmark_group("pack writer");
    g.sample_size(10);
    for (name, data) in &inputs {
        g.throughput(Throughput::Bytes(data.len() as u64));
        for level in [1, 3] {
            let tmp = tempfile::tempdir().expect("tmp");
            let mut repo = repository(tmp.path());
            repo.set_zstd_level(level).expect("level");
            let mut counter = 0u64;
            g.bench_with_input(
                BenchmarkId::new(format!("{name} zstd {level}"), "1 MiB blobs"),
                data,
                |b, data| {
                    b.iter(|| {
                        for chunk in data.chunks(MIB) {
                            counter += 1;
                            let mut id = [0u8; 32];
                            id[..8].copy_from_slice(&counter.to_le_bytes());
                            repo.save_blob(BlobKind::Data, BlobId::from_bytes(id), chunk)
                                .expect("save");
                        }
                    })
                },
            );
            repo.flush().expect("flush");
        }
    }
    g.finish();
}

criterion_group!(benches, chunker, hasher, pack_writer);
criterion_main!(benches);
