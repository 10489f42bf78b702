//! Frame benches: the 28-byte header written and parsed, a whole request encoded, and the
//! frame decoder over a buffer of many pipelined frames. Ids read
//! `frame/{header_write,header_parse,decode}/{case}` and `frame/encode/request` (which times
//! building the `Frame` too, its two allocations and its drop included, not the encoding
//! alone).

#![allow(clippy::unwrap_used)] // a bench that fails should stop loudly

use std::hint::black_box;

use bytes::BytesMut;
use criterion::{criterion_group, criterion_main, Criterion, Throughput};
use netrpc::transport::{Frame, FrameDecoder, FrameHeader, FrameLimits, HEADER_LEN};

fn request(seq: u64) -> Frame {
    Frame::request(seq, "Arith.Multiply", 1, vec![0x0e, 0x10])
}

fn frames(c: &mut Criterion) {
    let limits = FrameLimits::default();
    let mut group = c.benchmark_group("frame");

    let header = request(1).header();
    let mut out = Vec::with_capacity(HEADER_LEN);
    group.bench_function("header_write/request", |b| {
        b.iter(|| {
            out.clear();
            black_box(&header).write_to(&mut out);
        })
    });
    let bytes: [u8; HEADER_LEN] = out.clone().try_into().unwrap();
    group.bench_function("header_parse/request", |b| {
        b.iter(|| FrameHeader::parse(black_box(&bytes), &limits).unwrap())
    });

    let mut encoded = BytesMut::new();
    group.bench_function("encode/request", |b| {
        b.iter(|| {
            encoded.clear();
            request(black_box(7)).encode(&mut encoded, &limits).unwrap();
        })
    });

    const COUNT: usize = 1_000;
    let mut stream = BytesMut::new();
    for seq in 0..COUNT as u64 {
        request(seq).encode(&mut stream, &limits).unwrap();
    }
    group.throughput(Throughput::Elements(COUNT as u64));
    for (name, chunk) in [
        ("decode/1000_frames_whole", stream.len()),
        ("decode/1000_frames_1KiB_chunks", 1024),
    ] {
        group.bench_function(name, |b| {
            b.iter(|| {
                let mut decoder = FrameDecoder::new(limits);
                let mut seen = 0;
                for piece in stream.chunks(chunk) {
                    decoder.handle_bytes(piece);
                    while decoder.poll_frame().unwrap().is_some() {
                        seen += 1;
                    }
                }
                assert_eq!(seen, COUNT);
            })
        });
    }
    group.finish();
}

criterion_group!(benches, frames);
criterion_main!(benches);
