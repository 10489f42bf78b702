//! Codec benches: encode and decode of the tutorials' `Args` and of 1 KiB and 64 KiB
//! payloads, postcard beside JSON. Ids read `codec/{encode,decode}/{postcard,json}/{size}`.
//! Throughput counts the value's bytes in memory (16 for `Args`, two `i64`s), not the
//! encoded ones (postcard encodes that `Args` in 2).

#![allow(clippy::unwrap_used)] // a bench that fails should stop loudly

#[path = "../examples/support/arith.rs"]
mod arith;

use std::hint::black_box;

use arith::Args;
use bytes::BytesMut;
use criterion::{criterion_group, criterion_main, BenchmarkId, Criterion, Throughput};
use netrpc::{Codec, CodecKind};
use serde::{de::DeserializeOwned, Serialize};

fn bench_value<T>(c: &mut Criterion, size: &str, value: &T, bytes: u64)
where
    T: Serialize + DeserializeOwned,
{
    let mut group = c.benchmark_group("codec");
    group.throughput(Throughput::Bytes(bytes));
    for codec in [CodecKind::Postcard, CodecKind::Json] {
        let mut out = BytesMut::new();
        group.bench_function(
            BenchmarkId::new(format!("encode/{}", codec.name()), size),
            |b| {
                b.iter(|| {
                    out.clear();
                    codec.encode(black_box(value), &mut out).unwrap();
                })
            },
        );
        let mut encoded = BytesMut::new();
        codec.encode(value, &mut encoded).unwrap();
        group.bench_function(
            BenchmarkId::new(format!("decode/{}", codec.name()), size),
            |b| b.iter(|| codec.decode::<T>(black_box(&encoded)).unwrap()),
        );
    }
    group.finish();
}

fn codecs(c: &mut Criterion) {
    bench_value(c, "Args", &Args { a: 7, b: 8 }, 16);
    for len in [1024usize, 64 * 1024] {
        let payload: Vec<u8> = (0..len).map(|i| i as u8).collect();
        let size = format!("{}KiB", len / 1024);
        bench_value(c, &size, &payload, len as u64);
    }
}

criterion_group!(benches, codecs);
criterion_main!(benches);
