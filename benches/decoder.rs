//! Decoder throughput on a realistic pgoutput stream.
//!
//! The stream is what a busy OLTP table produces: short transactions, each
//! Begin, Insert of an 8-column row, Update carrying the old key (a primary
//! key change), Delete, Commit; the Relation is announced once at the start,
//! as pgoutput does. It is encoded once and decoded in a loop, and reported
//! in messages per second.
//!
//! Run with `cargo bench --bench decoder`.

mod support;

use std::hint::black_box;

use bytes::Bytes;
use criterion::{Criterion, Throughput, criterion_group, criterion_main};
use walshift::pgoutput::{Decoder, DecoderOptions};

use support::stream::stream;

fn decode_stream(c: &mut Criterion) {
    let payloads = stream();
    let bytes: usize = payloads.iter().map(Bytes::len).sum();
    let opts = DecoderOptions {
        proto_version: 2,
        streaming_parallel: false,
    };
    let mut group = c.benchmark_group("pgoutput");
    group.throughput(Throughput::Elements(payloads.len() as u64));
    group.bench_function(
        format!("decode {} messages ({bytes} bytes)", payloads.len()),
        |b| {
            b.iter(|| {
                let mut d = Decoder::new(opts);
                for p in &payloads {
                    // Cloning `Bytes` only bumps a reference count.
                    black_box(d.decode(p.clone()).expect("valid stream"));
                }
            })
        },
    );
    group.finish();
}

criterion_group!(benches, decode_stream);
criterion_main!(benches);
