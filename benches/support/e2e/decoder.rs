//! Scenario 6: the pgoutput decoder in this process, on the stream of `benches/decoder.rs`
//! (criterion's `cargo bench --bench decoder` measures the same loop more carefully).

use std::hint::black_box;
use std::time::{Duration, Instant};

use walshift::pgoutput::{Decoder, DecoderOptions};

use super::median;

/// How long one repetition decodes.
const SPAN: Duration = Duration::from_secs(2);

#[derive(Debug, Clone, Default)]
pub struct Outcome {
    pub messages: usize,
    pub bytes: usize,
    /// Messages per second, one per repetition.
    pub rates: Vec<f64>,
}

impl Outcome {
    pub fn median(&self) -> f64 {
        median(&self.rates)
    }
}

pub fn run(reps: usize) -> Outcome {
    let payloads = crate::support::stream::stream();
    let opts = DecoderOptions {
        proto_version: 2,
        streaming_parallel: false,
    };
    let mut out = Outcome {
        messages: payloads.len(),
        bytes: payloads.iter().map(|p| p.len()).sum(),
        rates: Vec::new(),
    };
    eprintln!(
        "== decoder: {} messages ({} bytes) per pass",
        out.messages, out.bytes
    );
    for rep in 0..reps {
        let started = Instant::now();
        let mut decoded = 0usize;
        while started.elapsed() < SPAN {
            let mut d = Decoder::new(opts);
            for p in &payloads {
                black_box(d.decode(p.clone()).expect("valid stream"));
            }
            decoded += payloads.len();
        }
        let rate = decoded as f64 / started.elapsed().as_secs_f64();
        eprintln!("  rep {}: {:.2} M messages/s", rep + 1, rate / 1e6);
        out.rates.push(rate);
    }
    out
}
